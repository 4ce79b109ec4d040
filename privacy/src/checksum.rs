//! Check digits: Luhn (payment cards, Canadian SIN), ISO 13616 mod-97 (IBAN), and the Spanish
//! DNI/NIE control letter.

/// Whether `digits` (ASCII digits only) pass the Luhn check.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.len() < 2 {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Whether `iban` (uppercase letters and digits, no spaces) passes the mod-97 check of ISO 13616:
/// the first four characters moved to the end, letters as 10..35, the number mod 97 is 1.
pub fn iban_valid(iban: &[u8]) -> bool {
    if !(15..=34).contains(&iban.len())
        || !iban[..2].iter().all(u8::is_ascii_uppercase)
        || !iban[2..4].iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A' + 10)) % 97,
            _ => return false,
        };
    }
    rem == 1
}

/// The control letter of a Spanish DNI number (an NIE's leading X/Y/Z counts as 0/1/2).
pub fn dni_letter(number: u32) -> u8 {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    LETTERS[(number % 23) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_known_card_numbers_and_rejects_a_changed_digit() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"5555555555554444"));
        assert!(luhn_valid(b"378282246310005"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(!luhn_valid(b"4"));
    }

    #[test]
    fn iban_checksum_follows_iso_13616() {
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(iban_valid(b"FR1420041010050500013M02606"));
        assert!(!iban_valid(b"DE89370400440532013001"));
        assert!(!iban_valid(b"de89370400440532013000"));
    }

    #[test]
    fn dni_letter_is_the_number_mod_23() {
        assert_eq!(dni_letter(12_345_678), b'Z');
        assert_eq!(dni_letter(0), b'T');
    }
}
