//! A throwaway certificate authority and a server certificate it signed,
//! for `wss://` runs on loopback (tests and benchmarks): the server gets
//! `cert.pem` + `key.pem`, client-sim trusts `ca.pem` with `--ca`.
//!
//! It writes PEM files and nothing else; it must never be used for a
//! server anyone else connects to (the CA's key is thrown away, so nothing
//! else can be signed with it, but nothing protects these files either).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The names the server certificate is valid for: what loopback URLs use.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Where [`write`] put the files.
#[derive(Clone, Debug)]
pub struct TestCert {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    #[error("generating a test certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Generates a CA (ECDSA P-256, ring) and a server certificate for
/// [`SERVER_NAMES`] signed by it, and writes them into `dir`, prefixed
/// with `prefix` (so two authorities can share a directory).
pub fn write(dir: &Path, prefix: &str) -> Result<TestCert, CertGenError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{prefix}surge test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "surge test server");
    let cert = params.signed_by(&key, &ca)?;
    let out = TestCert {
        ca: dir.join(format!("{prefix}ca.pem")),
        cert: dir.join(format!("{prefix}cert.pem")),
        key: dir.join(format!("{prefix}key.pem")),
    };
    for (path, text) in [
        (&out.ca, ca.pem()),
        (&out.cert, cert.pem()),
        (&out.key, key.serialize_pem()),
    ] {
        std::fs::write(path, text).map_err(|source| CertGenError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(out)
}
