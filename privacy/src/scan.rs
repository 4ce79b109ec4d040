//! The built-in scanners: one pass over the bytes that tries, at each word start, the formats
//! that can begin with that byte (numbers, IBANs, national ids, IP addresses, key prefixes,
//! high-entropy tokens), plus a `memchr` pass for e-mail addresses (anchored on `@`) and one for
//! PEM private-key blocks. No regex: each format is a few comparisons on bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use memchr::memmem;

use crate::checksum::{dni_letter, iban_valid, luhn_valid};
use crate::kind::{Finding, Kind};

/// Appends every built-in finding of the kinds in `kinds` (a bit per [`Kind::BUILTIN`] entry).
pub(crate) fn builtin(b: &[u8], kinds: u16, out: &mut Vec<Finding>) {
    let on = |k: Kind| kinds & (1 << Kind::BUILTIN.iter().position(|x| *x == k).unwrap_or(15)) != 0;
    if on(Kind::Email) {
        emails(b, out);
    }
    if on(Kind::Secret) {
        private_keys(b, out);
    }
    let mut i = 0;
    // Where the last high-entropy check ended: a token is judged once, not again from each
    // word start inside it.
    let mut entropy_until = 0;
    while i < b.len() {
        let c = b[i];
        let start = i == 0 || !is_word(b[i - 1]);
        if !start || !(c.is_ascii_alphanumeric() || c == b'+' || c == b'(' || c == b':') {
            i += 1;
            continue;
        }
        let found = word_start(b, i, &on, &mut entropy_until);
        match found {
            Some(f) => {
                i = f.end.max(i + 1);
                out.push(f);
            }
            None => {
                // Skip the rest of this word: nothing starts inside it.
                i += 1;
                while i < b.len() && is_word(b[i]) {
                    i += 1;
                }
            }
        }
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether position `i` ends a token: the end of text or a byte that cannot continue a word.
fn ends(b: &[u8], i: usize) -> bool {
    b.get(i).is_none_or(|c| !is_word(*c))
}

fn finding(kind: Kind, start: usize, end: usize) -> Option<Finding> {
    Some(Finding { kind, start, end })
}

/// The formats that may start at word start `i`.
fn word_start(
    b: &[u8],
    i: usize,
    on: &impl Fn(Kind) -> bool,
    entropy_until: &mut usize,
) -> Option<Finding> {
    let c = b[i];
    if on(Kind::IpAddress)
        && let Some(f) = ipv6(b, i)
    {
        return Some(f);
    }
    if c.is_ascii_digit() || c == b'+' || c == b'(' {
        let prev = if i == 0 { b' ' } else { b[i - 1] };
        // Inside a path, a version, an identifier or a decimal: not a number of its own.
        if matches!(prev, b'-' | b'.' | b'/' | b'\\' | b'#' | b'@' | b'=') {
            return None;
        }
        return numbers(b, i, on);
    }
    if c.is_ascii_uppercase() {
        if on(Kind::Iban)
            && let Some(f) = iban(b, i)
        {
            return Some(f);
        }
        if on(Kind::UkNino)
            && let Some(f) = nino(b, i)
        {
            return Some(f);
        }
        if on(Kind::EsDni)
            && let Some(f) = nie(b, i)
        {
            return Some(f);
        }
    }
    if on(Kind::Secret) {
        if let Some(f) = key_prefix(b, i) {
            return Some(f);
        }
        if i >= *entropy_until {
            let end = token_end(b, i, |c| {
                c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'_' | b'-')
            });
            *entropy_until = end;
            if high_entropy(&b[i..end]) {
                return finding(Kind::Secret, i, end);
            }
        }
    }
    None
}

fn token_end(b: &[u8], mut i: usize, ok: impl Fn(u8) -> bool) -> usize {
    while i < b.len() && ok(b[i]) {
        i += 1;
    }
    i
}

// ===== e-mail =====

fn emails(b: &[u8], out: &mut Vec<Finding>) {
    let local = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    let domain = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-');
    let mut last_end = 0;
    for at in memchr::memchr_iter(b'@', b) {
        if at < last_end {
            continue;
        }
        let mut s = at;
        while s > last_end && local(b[s - 1]) {
            s -= 1;
        }
        while s < at && matches!(b[s], b'.' | b'-') {
            s += 1;
        }
        if s == at {
            continue;
        }
        let mut e = token_end(b, at + 1, domain);
        while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        let host = &b[at + 1..e];
        let Some(dot) = host.iter().rposition(|c| *c == b'.') else {
            continue;
        };
        let tld = &host[dot + 1..];
        if dot == 0 || tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
            continue;
        }
        out.push(Finding {
            kind: Kind::Email,
            start: s,
            end: e,
        });
        last_end = e;
    }
}

// ===== private keys =====

fn private_keys(b: &[u8], out: &mut Vec<Finding>) {
    for start in memmem::find_iter(b, b"-----BEGIN ") {
        let line_end = memchr::memchr(b'\n', &b[start..]).map_or(b.len(), |n| start + n);
        if memmem::find(&b[start..line_end], b"PRIVATE KEY-----").is_none() {
            continue;
        }
        let end = match memmem::find(&b[line_end..], b"-----END ") {
            Some(n) => {
                let after = line_end + n + 9;
                memmem::find(&b[after..], b"-----").map_or(b.len(), |m| after + m + 5)
            }
            None => b.len(),
        };
        out.push(Finding {
            kind: Kind::Secret,
            start,
            end,
        });
    }
}

// ===== numbers: cards, phones, SSN, SIN, IPv4, DNI =====

const MAX_GROUPS: usize = 8;
const MAX_DIGITS: usize = 24;

/// A run of digit groups joined by separators (space, dash, dot, parentheses).
struct Digits {
    digits: [u8; MAX_DIGITS],
    n: usize,
    /// Per group: first byte, one past the last byte, first digit index, digit count.
    groups: [(usize, usize, usize, usize); MAX_GROUPS],
    ng: usize,
    /// Per gap between group g and g+1: which separators it used.
    gaps: [u8; MAX_GROUPS],
    plus: bool,
}

const SPACE: u8 = 1;
const DASH: u8 = 2;
const DOT: u8 = 4;
const PAREN: u8 = 8;

fn read_digits(b: &[u8], start: usize) -> Option<Digits> {
    let mut d = Digits {
        digits: [0; MAX_DIGITS],
        n: 0,
        groups: [(0, 0, 0, 0); MAX_GROUPS],
        ng: 0,
        gaps: [0; MAX_GROUPS],
        plus: false,
    };
    let mut i = start;
    if b[i] == b'+' {
        d.plus = true;
        i += 1;
    }
    let mut gap = 0u8;
    if b.get(i) == Some(&b'(') {
        gap = PAREN;
        i += 1;
    }
    if !b.get(i).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if gap != 0 {
        d.gaps[0] = PAREN;
    }
    loop {
        let gs = i;
        let ds = d.n;
        while i < b.len() && b[i].is_ascii_digit() {
            if d.n == MAX_DIGITS {
                return None;
            }
            d.digits[d.n] = b[i];
            d.n += 1;
            i += 1;
        }
        if d.ng == MAX_GROUPS {
            return None;
        }
        d.groups[d.ng] = (gs, i, ds, d.n - ds);
        d.ng += 1;
        // A separator of at most three bytes, then a digit, continues the run.
        let mut j = i;
        let mut seps = 0u8;
        while j < b.len() && j - i < 3 {
            seps |= match b[j] {
                b' ' => SPACE,
                b'-' => DASH,
                b'.' if seps & DOT == 0 => DOT,
                b'(' | b')' => PAREN,
                _ => break,
            };
            j += 1;
        }
        if j > i && b.get(j).is_some_and(u8::is_ascii_digit) && d.ng < MAX_GROUPS {
            d.gaps[d.ng - 1] |= seps;
            i = j;
            continue;
        }
        break;
    }
    Some(d)
}

fn numbers(b: &[u8], start: usize, on: &impl Fn(Kind) -> bool) -> Option<Finding> {
    let d = read_digits(b, start)?;
    let last_end = d.groups[d.ng - 1].1;
    // A DNI: eight digits and the control letter.
    if on(Kind::EsDni) && d.ng == 1 && d.n == 8 && !d.plus {
        let mut e = last_end;
        if b.get(e) == Some(&b'-') {
            e += 1;
        }
        if let Some(&letter) = b.get(e)
            && letter.is_ascii_uppercase()
            && ends(b, e + 1)
            && dni_letter(number(&d.digits[..8])) == letter
        {
            return finding(Kind::EsDni, start, e + 1);
        }
    }
    // The whole run first, then runs with groups cut off at spaces (a number next to another).
    for s in 0..d.ng {
        if s > 0 && d.gaps[s - 1] & SPACE == 0 {
            continue;
        }
        for e in (s + 1..=d.ng).rev() {
            if e < d.ng && d.gaps[e - 1] & SPACE == 0 {
                continue;
            }
            let end = d.groups[e - 1].1;
            if !ends(b, end) {
                continue;
            }
            if let Some(kind) = classify(&d, s, e, on) {
                let from = if s == 0 { start } else { d.groups[s].0 };
                return finding(kind, from, end);
            }
        }
    }
    None
}

fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0u32, |n, d| {
        n.wrapping_mul(10).wrapping_add(u32::from(d - b'0'))
    })
}

fn classify(d: &Digits, s: usize, e: usize, on: &impl Fn(Kind) -> bool) -> Option<Kind> {
    let groups = &d.groups[s..e];
    let digits = &d.digits[groups[0].2..groups[e - s - 1].2 + groups[e - s - 1].3];
    let n = digits.len();
    let lens: Vec<usize> = groups.iter().map(|g| g.3).collect();
    let seps = d.gaps[s..e - 1].iter().fold(0u8, |a, g| a | g);
    let lead_paren = s == 0 && d.gaps[0] & PAREN != 0 && e - s != 1;
    let plus = d.plus && s == 0;
    let dots_only = seps == DOT;
    if dots_only && !plus {
        if on(Kind::IpAddress) && lens.len() == 4 && lens.iter().all(|l| *l <= 3) {
            let text: String = groups
                .iter()
                .map(|g| std::str::from_utf8(&d.digits[g.2..g.2 + g.3]).unwrap_or("x"))
                .collect::<Vec<_>>()
                .join(".");
            if text.parse::<Ipv4Addr>().is_ok() {
                return Some(Kind::IpAddress);
            }
        }
        if on(Kind::Phone) && lens == [3, 3, 4] {
            return Some(Kind::Phone);
        }
        return None;
    }
    if seps & DOT != 0 {
        return None;
    }
    let plain = seps & !(SPACE | DASH) == 0 && !plus && !lead_paren;
    if on(Kind::UsSsn) && plain && lens == [3, 2, 4] && seps != 0 {
        let area = number(&digits[..3]);
        if area != 0
            && area != 666
            && area < 900
            && number(&digits[3..5]) != 0
            && number(&digits[5..]) != 0
        {
            return Some(Kind::UsSsn);
        }
    }
    if on(Kind::CaSin)
        && plain
        && lens == [3, 3, 3]
        && seps != 0
        && !matches!(digits[0], b'0' | b'8')
        && luhn_valid(digits)
    {
        return Some(Kind::CaSin);
    }
    if on(Kind::PaymentCard)
        && plain
        && (13..=19).contains(&n)
        && issuer(digits, n)
        && luhn_valid(digits)
    {
        return Some(Kind::PaymentCard);
    }
    if on(Kind::Phone) {
        if plus {
            return (8..=15).contains(&n).then_some(Kind::Phone);
        }
        if seps == 0 && !lead_paren {
            return None;
        }
        let nanp = (n == 10 && lens == [3, 3, 4])
            || (n == 11 && lens == [1, 3, 3, 4] && digits[0] == b'1');
        let uk = digits[0] == b'0'
            && matches!(
                lens.as_slice(),
                [5, 6] | [4, 3, 4] | [3, 4, 4] | [4, 6] | [5, 3, 3] | [3, 3, 4] | [2, 4, 4]
            );
        if nanp || uk {
            return Some(Kind::Phone);
        }
    }
    None
}

/// Whether a card number starts with a known issuer's prefix and has that issuer's length.
fn issuer(d: &[u8], n: usize) -> bool {
    let p2 = number(&d[..2]);
    let p4 = number(&d[..4]);
    match d[0] {
        b'4' => matches!(n, 13 | 16 | 19),
        b'5' => (51..=55).contains(&p2) && n == 16,
        b'2' => (2221..=2720).contains(&p4) && n == 16,
        b'3' => {
            (matches!(p2, 34 | 37) && n == 15)
                || (p2 == 35 && n >= 16)
                || (matches!(p2, 30 | 36 | 38) && n == 14)
        }
        b'6' => (p4 == 6011 || p2 == 65 || (644..=649).contains(&(p4 / 10))) && n >= 16,
        _ => false,
    }
}

// ===== IP version 6 =====

fn ipv6(b: &[u8], i: usize) -> Option<Finding> {
    let end = token_end(b, i, |c| c.is_ascii_hexdigit() || c == b':' || c == b'.');
    let mut e = end;
    while e > i && b[e - 1] == b'.' {
        e -= 1;
    }
    let t = &b[i..e];
    let colons = t.iter().filter(|c| **c == b':').count();
    if colons < 2 || t.len() < 3 || !t.iter().any(u8::is_ascii_digit) || !ends(b, e) {
        return None;
    }
    let text = std::str::from_utf8(t).ok()?;
    // `::` alone, or a handful of colons around one digit, is code, not an address.
    if text.parse::<Ipv6Addr>().is_ok() && t.iter().filter(|c| c.is_ascii_hexdigit()).count() >= 2 {
        return finding(Kind::IpAddress, i, e);
    }
    None
}

// ===== IBAN, NINO, NIE =====

fn iban(b: &[u8], i: usize) -> Option<Finding> {
    if !(b.len() >= i + 4
        && b[i + 1].is_ascii_uppercase()
        && b[i + 2].is_ascii_digit()
        && b[i + 3].is_ascii_digit())
    {
        return None;
    }
    // The characters without spaces, and where each ends in the text.
    let mut compact = [0u8; 34];
    let mut pos = [0usize; 34];
    let mut n = 0;
    let mut j = i;
    let mut group = 0;
    while j < b.len() && n < 34 {
        let c = b[j];
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            compact[n] = c;
            pos[n] = j + 1;
            n += 1;
            group += 1;
            j += 1;
        } else if c == b' '
            && group == 4
            && b.get(j + 1)
                .is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            group = 0;
            j += 1;
        } else {
            break;
        }
    }
    // Longest first: a word after the number may have been read as one more group.
    for len in (15..=n).rev() {
        if ends(b, pos[len - 1]) && iban_valid(&compact[..len]) {
            return finding(Kind::Iban, i, pos[len - 1]);
        }
    }
    None
}

fn nino(b: &[u8], i: usize) -> Option<Finding> {
    let (a, c) = (b[i], *b.get(i + 1)?);
    if !c.is_ascii_uppercase()
        || b"DFIQUV".contains(&a)
        || b"DFIOQUV".contains(&c)
        || matches!(
            &[a, c],
            b"BG" | b"GB" | b"NK" | b"KN" | b"TN" | b"NT" | b"ZZ"
        )
    {
        return None;
    }
    let mut j = i + 2;
    let mut digits = 0;
    while digits < 6 {
        if digits % 2 == 0 && b.get(j) == Some(&b' ') {
            j += 1;
        }
        if !b.get(j).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        digits += 1;
        j += 1;
    }
    if b.get(j) == Some(&b' ') {
        j += 1;
    }
    let suffix = *b.get(j)?;
    (matches!(suffix, b'A'..=b'D') && ends(b, j + 1)).then_some(Finding {
        kind: Kind::UkNino,
        start: i,
        end: j + 1,
    })
}

fn nie(b: &[u8], i: usize) -> Option<Finding> {
    let lead = match b[i] {
        b'X' => 0,
        b'Y' => 1,
        b'Z' => 2,
        _ => return None,
    };
    let digits = b.get(i + 1..i + 8)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut e = i + 8;
    if b.get(e) == Some(&b'-') {
        e += 1;
    }
    let letter = *b.get(e)?;
    let n = lead * 10_000_000 + number(digits);
    (ends(b, e + 1) && dni_letter(n) == letter).then_some(Finding {
        kind: Kind::EsDni,
        start: i,
        end: e + 1,
    })
}

// ===== secrets =====

/// Keys with a known prefix: OpenAI and Anthropic (`sk-`), AWS access key ids, GitHub, Slack,
/// Google API keys, and JWTs.
fn key_prefix(b: &[u8], i: usize) -> Option<Finding> {
    let rest = &b[i..];
    let key = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let run = |from: usize, ok: &dyn Fn(u8) -> bool| token_end(b, i + from, ok) - (i + from);
    let secret = |len: usize| finding(Kind::Secret, i, i + len);
    if rest.starts_with(b"sk-") {
        let n = run(3, &key);
        return (n >= 20).then(|| secret(3 + n)).flatten();
    }
    if rest.starts_with(b"AKIA") || rest.starts_with(b"ASIA") {
        let n = run(4, &|c: u8| c.is_ascii_uppercase() || c.is_ascii_digit());
        return (n == 16 && ends(b, i + 20)).then(|| secret(20)).flatten();
    }
    if rest.starts_with(b"AIza") {
        let n = run(4, &key);
        return (n >= 35).then(|| secret(4 + n)).flatten();
    }
    for prefix in [
        &b"github_pat_"[..],
        b"ghp_",
        b"gho_",
        b"ghu_",
        b"ghs_",
        b"ghr_",
    ] {
        if rest.starts_with(prefix) {
            let n = run(prefix.len(), &|c: u8| {
                c.is_ascii_alphanumeric() || c == b'_'
            });
            return (n >= 20).then(|| secret(prefix.len() + n)).flatten();
        }
    }
    if rest.starts_with(b"xox")
        && rest.get(4) == Some(&b'-')
        && matches!(rest.get(3), Some(b'a' | b'b' | b'p' | b'r' | b's'))
    {
        let n = run(5, &|c: u8| c.is_ascii_alphanumeric() || c == b'-');
        return (n >= 10).then(|| secret(5 + n)).flatten();
    }
    if rest.starts_with(b"eyJ") {
        let end = token_end(b, i, |c| key(c) || c == b'.');
        let t = &b[i..end];
        let mut parts = t.split(|c| *c == b'.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_none()
            && h.len() >= 10
            && p.len() >= 10
            && p.starts_with(b"eyJ")
            && s.len() >= 10
        {
            return secret(t.len());
        }
    }
    None
}

/// A long token mixing upper case, lower case and digits with high per-character entropy: a
/// generated credential rather than a word, an identifier or a hex digest.
fn high_entropy(t: &[u8]) -> bool {
    if !(24..=4096).contains(&t.len()) {
        return false;
    }
    let (mut upper, mut lower, mut digit) = (0, 0, 0);
    let mut counts = [0u16; 128];
    for &c in t {
        match c {
            b'A'..=b'Z' => upper += 1,
            b'a'..=b'z' => lower += 1,
            b'0'..=b'9' => digit += 1,
            _ => {}
        }
        counts[usize::from(c & 127)] += 1;
    }
    if upper < 2 || lower < 2 || digit < 2 {
        return false;
    }
    let len = t.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum();
    entropy >= 4.0
}

#[cfg(test)]
mod tests {
    use crate::detector::Detector;
    use crate::kind::Kind;

    fn found(text: &str) -> Vec<(Kind, &str)> {
        Detector::builtin()
            .scan(text)
            .into_iter()
            .map(|f| (f.kind, &text[f.start..f.end]))
            .collect()
    }

    fn one(text: &str, kind: Kind, value: &str) {
        assert_eq!(found(text), [(kind, value)], "in {text:?}");
    }

    #[test]
    fn emails_phones_and_cards() {
        one(
            "write to jane.doe+x@mail.example.co.uk.",
            Kind::Email,
            "jane.doe+x@mail.example.co.uk",
        );
        one("call +44 20 7946 0958 now", Kind::Phone, "+44 20 7946 0958");
        one("call (415) 555-0132", Kind::Phone, "(415) 555-0132");
        one("or 415-555-0132.", Kind::Phone, "415-555-0132");
        one("UK 020 7946 0958", Kind::Phone, "020 7946 0958");
        one(
            "card 4111 1111 1111 1111 exp",
            Kind::PaymentCard,
            "4111 1111 1111 1111",
        );
        one("amex 378282246310005", Kind::PaymentCard, "378282246310005");
        one(
            "card 4111-1111-1111-1111 2027",
            Kind::PaymentCard,
            "4111-1111-1111-1111",
        );
    }

    #[test]
    fn ids_and_addresses() {
        one("ssn 123-45-6789", Kind::UsSsn, "123-45-6789");
        one("nino AB 12 34 56 C", Kind::UkNino, "AB 12 34 56 C");
        one("nino JG103759A.", Kind::UkNino, "JG103759A");
        one("dni 12345678Z", Kind::EsDni, "12345678Z");
        one("nie X1234567L", Kind::EsDni, "X1234567L");
        one("sin 130 692 544", Kind::CaSin, "130 692 544");
        one(
            "iban DE89 3704 0044 0532 0130 00 please",
            Kind::Iban,
            "DE89 3704 0044 0532 0130 00",
        );
        one(
            "iban GB82WEST12345698765432",
            Kind::Iban,
            "GB82WEST12345698765432",
        );
        one("host 192.168.10.4:8080", Kind::IpAddress, "192.168.10.4");
        one(
            "v6 2001:db8::8a2e:370:7334 up",
            Kind::IpAddress,
            "2001:db8::8a2e:370:7334",
        );
    }

    #[test]
    fn secrets() {
        one(
            "key sk-proj-abcdefghijklmnopqrstuvwx1234",
            Kind::Secret,
            "sk-proj-abcdefghijklmnopqrstuvwx1234",
        );
        one("AKIAIOSFODNN7EXAMPLE", Kind::Secret, "AKIAIOSFODNN7EXAMPLE");
        one(
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            Kind::Secret,
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        );
        one(
            "xoxb-1234567890-abcdefghij",
            Kind::Secret,
            "xoxb-1234567890-abcdefghij",
        );
        one(
            "t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            Kind::Secret,
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        );
        one(
            "token Zx81kQp0LmN4vB7tR2sY9wE3",
            Kind::Secret,
            "Zx81kQp0LmN4vB7tR2sY9wE3",
        );
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        one(&format!("k {pem} end"), Kind::Secret, pem);
    }

    #[test]
    fn look_alikes_are_not_flagged() {
        for clean in [
            "order 1234567890123456 shipped on 2024-01-15 at 10:30:45",
            "upgrade to v1.2.3 or 10.0.19041.1; see issue #4111111111111111",
            "commit 3f786850e387550fdab836ed7e6dc881de23f663 and uuid 123e4567-e89b-12d3-a456-426614174000",
            "std::vector<int> v; a::b; x = 3.14159; price $1,299.99",
            "getUserAccountBalanceForCustomer(id) and ISBN 978-3-16-148410-0",
            "@Override public void run() and @app.route('/x')",
            "invoice INV-2024-000123, ticket ORD-555-123-4567",
        ] {
            assert!(found(clean).is_empty(), "{clean:?}: {:?}", found(clean));
        }
    }
}
