//! PEM files for TLS: certificate chains, private keys and CA bundles read into rustls types,
//! and what an upstream connection adds to the system's trust (a client certificate for mTLS,
//! extra CAs). The gateway's TLS listener reads its files through the same functions.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemIdentity {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What a connection to one upstream adds to the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The client certificate presented to an upstream that asks for one.
    pub client_identity: Option<PemIdentity>,
    /// CA certificates trusted for this upstream besides the system's (an internal CA).
    pub extra_roots: Option<PathBuf>,
}

fn tls_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Tls {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Every certificate in a PEM file; a file with none is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|e| tls_error(path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).map_err(|e| tls_error(path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            tls_error(path, "no PRIVATE KEY block in the file (PKCS#8, RSA or EC)")
        }
        e => tls_error(path, format!("not a PEM private key file: {e}")),
    })
}

/// The certificates of a PEM CA bundle as a trust store.
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_empty_files_name_the_path() {
        let dir = std::env::temp_dir().join(format!("tandem-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = read_certs(&missing).unwrap_err().to_string();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = read_certs(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let e = read_key(&empty).unwrap_err().to_string();
        assert!(e.contains("no PRIVATE KEY"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
