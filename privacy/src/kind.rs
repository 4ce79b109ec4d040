//! The kinds of sensitive data and a finding: a kind and where it is.

/// A kind of sensitive data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An e-mail address.
    Email,
    /// A phone number (international with `+`, North American, UK).
    Phone,
    /// A payment card number (known issuer prefix, Luhn).
    PaymentCard,
    /// An IBAN (mod-97 checksum).
    Iban,
    /// A US social security number (`123-45-6789`, with the SSA's invalid ranges excluded).
    UsSsn,
    /// A UK National Insurance number.
    UkNino,
    /// A Spanish DNI or NIE (control letter).
    EsDni,
    /// A Canadian social insurance number (grouped, Luhn).
    CaSin,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// An API key, private key, token or other secret (known prefixes, JWTs, high entropy).
    Secret,
    /// A configured pattern, by its index in [`DetectorConfig::patterns`].
    Pattern(u16),
    /// A configured dictionary term.
    Term,
}

impl Kind {
    /// The built-in kinds, in [`Kind::BUILTIN_NAMES`] order.
    pub const BUILTIN: [Kind; 10] = [
        Kind::Email,
        Kind::Phone,
        Kind::PaymentCard,
        Kind::Iban,
        Kind::UsSsn,
        Kind::UkNino,
        Kind::EsDni,
        Kind::CaSin,
        Kind::IpAddress,
        Kind::Secret,
    ];

    /// The names of the built-in kinds, as the config, headers and logs spell them.
    pub const BUILTIN_NAMES: [&'static str; 10] = [
        "email",
        "phone",
        "payment_card",
        "iban",
        "us_ssn",
        "uk_nino",
        "es_dni",
        "ca_sin",
        "ip_address",
        "secret",
    ];

    /// A built-in kind by name.
    pub fn parse(name: &str) -> Option<Kind> {
        Self::BUILTIN_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::BUILTIN[i])
    }

    pub(crate) fn bit(self) -> u16 {
        match Self::BUILTIN.iter().position(|k| *k == self) {
            Some(i) => 1 << i,
            None => 0,
        }
    }

    /// The placeholder label of a built-in kind (`<EMAIL_1>`).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Email => "EMAIL",
            Kind::Phone => "PHONE",
            Kind::PaymentCard => "CARD",
            Kind::Iban => "IBAN",
            Kind::UsSsn => "SSN",
            Kind::UkNino => "NINO",
            Kind::EsDni => "DNI",
            Kind::CaSin => "SIN",
            Kind::IpAddress => "IP",
            Kind::Secret => "SECRET",
            Kind::Pattern(_) => "PATTERN",
            Kind::Term => "TERM",
        }
    }
}

/// One piece of sensitive data: its kind and where it is (byte offsets into the scanned text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub kind: Kind,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}
