//! The one place client-sim's TLS client is set up, for every scenario:
//! which server certificates to trust (`--ca FILE` or `--insecure`), the
//! rustls configuration (ring provider, as the server uses), and session
//! resumption (on unless `--no-resumption`): a browser's first connection
//! pays a full handshake, its reconnections resume with a ticket.
//!
//! It owns configuration only. Driving a session over a non-blocking socket
//! is `transport`'s job; the tokio scenarios hand the configuration to
//! tokio-tungstenite through [`connect_ws`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::tickets::{GivenOnly, TicketPool};

/// TLS options every scenario shares; they matter only for `wss://` URLs.
#[derive(Clone, Debug, Default, clap::Args, Serialize, Deserialize)]
pub struct TlsArgs {
    /// For wss://: accept any server certificate (self-signed test
    /// certificates). Signatures are still checked, so the handshake costs
    /// what a real one does; only the chain of trust is skipped.
    #[arg(long, conflicts_with = "ca")]
    #[serde(default)]
    pub insecure: bool,
    /// For wss://: trust the certificate authority in this PEM file (and
    /// nothing else).
    #[arg(long)]
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// For wss://: never resume a TLS session, so every connection (and
    /// every reconnection in a storm) pays a full handshake.
    #[arg(long, conflicts_with = "resume_first_connects")]
    #[serde(default)]
    pub no_resumption: bool,
    /// For wss://: first connections resume too, with tickets earlier
    /// connections of the run were given (as if every browser had been
    /// there before): resumed handshakes at ramp speed, for benchmarks.
    #[arg(long)]
    #[serde(default)]
    pub resume_first_connects: bool,
}

/// The configurations a process's connections start their sessions from.
/// Both share one ticket pool: what any connection is given, a
/// reconnection can resume with, as a browser resumes with its own ticket.
#[derive(Clone, Debug)]
pub struct Configs {
    /// A browser's first connection: a full handshake, unless
    /// `--resume-first-connects`.
    pub first: Arc<ClientConfig>,
    /// A reconnection: resumes when a ticket is at hand.
    pub again: Arc<ClientConfig>,
}

/// Why a TLS client could not be set up. All fatal: the run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("wss:// needs --ca FILE (trust that certificate authority) or --insecure (trust any certificate)")]
    NoTrust,
    #[error("--ca {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("--ca {0}: no certificate in the file")]
    EmptyCa(PathBuf),
    #[error("--ca {path}: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("rustls: {0}")]
    Config(#[from] rustls::Error),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The ring provider, as the server and the baseline use (aws-lc-rs needs
/// cmake and minutes of C compilation on this 2-core box), offering its
/// cipher suites in the order browsers do: AES-128-GCM first. rustls'
/// own order puts AES-256-GCM-SHA384 first, and a server that follows the
/// client's order (rustls' default; the tokio baseline does) would then
/// spend its handshakes in SHA-384, which has no hardware help on x86
/// (13% of a handshake-storm profile on this box), where the SHA-256 that
/// browsers get has.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::*;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The client configurations for `args`: trust, resumption, ALPN `http/1.1`.
pub fn client_configs(args: &TlsArgs) -> Result<Configs, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let path = args.ca.as_ref().ok_or(TlsError::NoTrust)?;
        builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if args.no_resumption {
        config.resumption = Resumption::disabled();
        let config = Arc::new(config);
        return Ok(Configs {
            first: config.clone(),
            again: config,
        });
    }
    let pool = Arc::new(TicketPool::default());
    let mut again = config.clone();
    again.resumption = Resumption::store(pool.clone());
    config.resumption = if args.resume_first_connects {
        Resumption::store(pool)
    } else {
        Resumption::store(Arc::new(GivenOnly(pool)))
    };
    Ok(Configs {
        first: Arc::new(config),
        again: Arc::new(again),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|source| TlsError::ReadCa {
        path: path.into(),
        source,
    })?;
    for cert in certs {
        let cert = cert.map_err(|source| TlsError::ReadCa {
            path: path.into(),
            source,
        })?;
        store.add(cert).map_err(|source| TlsError::BadCa {
            path: path.into(),
            source,
        })?;
    }
    if store.is_empty() {
        return Err(TlsError::EmptyCa(path.into()));
    }
    Ok(store)
}

/// The name to check the server's certificate against: the URL's host
/// without its port (`127.0.0.1` is checked as an IP address, as browsers do).
pub fn server_name(host_port: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.into()))
}

/// The configuration of the tokio scenarios' browsers, set once per process
/// by the scenario before it starts them: like a browser's trust store and
/// session cache, it is shared by every connection the process makes.
static TOKIO_CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Sets the tokio scenarios' TLS configuration for `url` (nothing for ws://).
/// Its browsers resume whenever a ticket is at hand (a rejoin after a drop).
pub fn install_for(url: &str, args: &TlsArgs) -> Result<(), TlsError> {
    if url.starts_with("wss://") {
        let _ = TOKIO_CONFIG.set(client_configs(args)?.again);
    }
    Ok(())
}

/// Opens a WebSocket to a `ws://` or `wss://` URL with tokio-tungstenite,
/// over the configuration [`install_for`] set.
pub async fn connect_ws(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, tokio_connector())
            .await?;
    Ok(ws)
}

/// As [`connect_ws`], over a TCP stream the caller opened (say, from a
/// chosen source address).
pub async fn connect_ws_over(
    url: &str,
    stream: tokio::net::TcpStream,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url, stream, None, tokio_connector())
            .await?;
    Ok(ws)
}

fn tokio_connector() -> Option<tokio_tungstenite::Connector> {
    TOKIO_CONFIG
        .get()
        .map(|c| tokio_tungstenite::Connector::Rustls(c.clone()))
}

/// Trusts any certificate, for self-signed test servers (`--insecure`);
/// handshake signatures are still verified, so the cost is a real one.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_drops_the_port_and_keeps_ip_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:8443"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("localhost:8443"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
    }

    #[test]
    fn wss_without_a_trust_choice_is_refused() {
        assert!(matches!(
            client_configs(&TlsArgs::default()),
            Err(TlsError::NoTrust)
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let args = TlsArgs {
            ca: Some(path),
            ..TlsArgs::default()
        };
        assert!(matches!(client_configs(&args), Err(TlsError::EmptyCa(_))));
    }
}
