//! The certificate chain and private key: read from their PEM files and
//! checked before they are used, at start and on every reload, so that an
//! expired certificate or a key that does not belong to it is refused with
//! a message naming the file, not discovered by browsers one failed
//! handshake at a time.
//!
//! It must not hold or swap the pair in use; `acceptor.rs` does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::tls::validity::{self, Validity};

/// Why a certificate and key were refused. Fatal at start (exit 2, like
/// every configuration error); on a reload the pair in use stays.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: no certificate in it (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no usable private key in it (PKCS#8, PKCS#1 or SEC1 PEM): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{path}: cannot read the certificate's validity dates")]
    NoValidity { path: PathBuf },
    #[error("{path}: the certificate expired at {not_after} (Unix time {now} now)")]
    Expired {
        path: PathBuf,
        not_after: String,
        now: i64,
    },
    #[error("{path}: the certificate is not valid before {not_before}")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("{key} does not match the certificate in {cert}: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Setup(String),
}

/// A checked pair, ready for handshakes, and when it stops being valid.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub validity: Validity,
}

/// Reads and checks the chain in `cert` and the key in `key`.
pub fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: cert.to_path_buf(),
        });
    };
    let validity = validity::of(leaf).ok_or_else(|| CertError::NoValidity {
        path: cert.to_path_buf(),
    })?;
    check_dates(cert, validity, unix_now())?;

    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| CertError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| CertError::KeyMismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        validity,
    })
}

fn check_dates(path: &Path, validity: Validity, now: i64) -> Result<(), CertError> {
    if now > validity.not_after {
        return Err(CertError::Expired {
            path: path.to_path_buf(),
            not_after: utc(validity.not_after),
            now,
        });
    }
    if now < validity.not_before {
        return Err(CertError::NotYetValid {
            path: path.to_path_buf(),
            not_before: utc(validity.not_before),
        });
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`, for messages an operator reads.
pub fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Inverse of `validity::days_from_civil` (the same published algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_an_operator_writes_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_620_600), "2026-11-25 15:30:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn a_certificate_is_refused_outside_its_window() {
        let window = Validity {
            not_before: 100,
            not_after: 200,
        };
        let path = Path::new("c.pem");
        assert!(matches!(
            check_dates(path, window, 201),
            Err(CertError::Expired { .. })
        ));
        assert!(matches!(
            check_dates(path, window, 99),
            Err(CertError::NotYetValid { .. })
        ));
        assert!(check_dates(path, window, 150).is_ok());
    }
}
