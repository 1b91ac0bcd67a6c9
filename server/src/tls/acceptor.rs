//! The TLS configuration every worker's handshakes use: protocol versions,
//! ALPN, the resumption ticketer, and the certificate pair, which a reload
//! (SIGHUP or `POST /reload`) swaps for the next handshakes while open
//! connections keep the keys they negotiated.
//!
//! One `ServerConfig` lives for the whole process, so the ticketer's keys
//! survive certificate reloads: a browser holding a ticket from before a
//! reload still resumes after it. It must not touch sockets; the workers
//! drive the sessions (`session.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::tls::certs::{self, CertError, Loaded};
use crate::tls::validity::Validity;

/// The only application protocol on the public port: WebSocket upgrades,
/// the page and its assets are all HTTP/1.1.
const ALPN_HTTP_11: &[u8] = b"http/1.1";

/// TLS 1.3 tickets sent after a full handshake. One: a browser uses one to
/// come back after a drop, and each ticket costs an encryption and ~200
/// bytes on every handshake of a reconnect storm.
const TLS13_TICKETS: usize = 1;

/// Cipher suites in the order the server picks them, whatever order a
/// client lists them in. AES-128-GCM first: its SHA-256 key schedule runs on
/// the CPU's SHA extensions, while SHA-384's (AES-256-GCM, first in rustls'
/// own client order) cost 13% of the server's CPU in a handshake storm
/// (tls-clients' perf profile, 2026-11-25); record keys cost the same
/// memory for all three. ChaCha20 next, for clients without AES hardware.
const SUITES: [rustls::SupportedCipherSuite; 9] = {
    use rustls::crypto::ring::cipher_suite::*;
    [
        TLS13_AES_128_GCM_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ]
};

/// The pair new handshakes get. A read lock per handshake is nothing next to
/// the handshake's own signature; a reload takes the write lock once.
#[derive(Debug)]
struct CurrentPair(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentPair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let pair = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(pair.clone())
    }
}

/// TLS for the public port: built once at start, shared by every worker.
pub struct Acceptor {
    config: Arc<ServerConfig>,
    pair: Arc<CurrentPair>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// When the pair in use expires (Unix seconds), for /metrics.
    not_after: AtomicI64,
}

impl Acceptor {
    /// Loads and checks the pair and builds the configuration.
    pub fn new(cert_path: &Path, key_path: &Path) -> Result<Acceptor, CertError> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = SUITES.to_vec();
        let provider = Arc::new(provider);
        let Loaded { key, validity } = certs::load(cert_path, key_path, &provider)?;
        let pair = Arc::new(CurrentPair(RwLock::new(key)));
        let setup = |e: rustls::Error| CertError::Setup(e.to_string());
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(setup)?
            .with_no_client_auth()
            .with_cert_resolver(pair.clone());
        config.alpn_protocols = vec![ALPN_HTTP_11.to_vec()];
        config.ignore_client_order = true;
        // Stateless tickets under keys that rotate (every 6 hours, the
        // previous key still accepted): resumption costs the server no
        // memory per browser, and a stolen key opens few sessions.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(setup)?;
        config.send_tls13_tickets = TLS13_TICKETS;
        // After the handshake only the record keys are kept (`records.rs`):
        // rustls hands them over through its kernel-connection API.
        config.enable_secret_extraction = true;
        Ok(Acceptor {
            config: Arc::new(config),
            pair,
            provider,
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            not_after: AtomicI64::new(validity.not_after),
        })
    }

    /// When the certificate new handshakes get expires, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// The configuration new sessions are made from.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Reads the certificate and key files again; if they check, new
    /// handshakes use them from now on. On error the pair in use stays.
    pub fn reload(&self) -> Result<Validity, CertError> {
        let Loaded { key, validity } =
            certs::load(&self.cert_path, &self.key_path, &self.provider)?;
        let mut pair = self
            .pair
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *pair = key;
        self.not_after.store(validity.not_after, Ordering::Relaxed);
        Ok(validity)
    }

    /// Reloads and logs the outcome; what SIGHUP and `POST /reload` do.
    /// Returns a line for an operator.
    pub fn reload_logged(&self) -> Result<String, String> {
        match self.reload() {
            Ok(validity) => {
                let until = certs::utc(validity.not_after);
                tracing::info!(cert = %self.cert_path.display(), valid_until = %until, "TLS certificate reloaded");
                Ok(format!("certificate reloaded; valid until {until}"))
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload refused; the pair in use stays");
                Err(format!("reload refused, the pair in use stays: {e}"))
            }
        }
    }
}
