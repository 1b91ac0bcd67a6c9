//! Helpers for the TLS tests: a test certificate authority and server
//! certificates made with rcgen at test time (never committed keys), the
//! files `--tls-cert`/`--tls-key` read, and wss:// connections through
//! tokio-rustls (a client we did not write) as the shared `Ws` type.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use surge::Server;
use tokio_tungstenite::Connector;

use crate::common::{Ws, WAIT};

/// A certificate authority for one test.
pub struct Ca {
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for localhost and 127.0.0.1, signed by this CA.
    pub fn leaf(&self, name: &str) -> Leaf {
        self.leaf_with(name, |_| {})
    }

    /// A certificate valid until the first of January of `year`.
    pub fn leaf_until(&self, name: &str, year: i32) -> Leaf {
        self.leaf_with(name, |p| p.not_after = date_time_ymd(year, 1, 1))
    }

    /// A certificate that expired in 2021.
    pub fn expired_leaf(&self) -> Leaf {
        self.leaf_with("expired", |p| {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2021, 1, 1);
        })
    }

    fn leaf_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        edit(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client configuration that trusts this CA only; connections made
    /// with the same one may resume each other's sessions.
    pub fn client(&self) -> Arc<ClientConfig> {
        client_for(&[self], None, "")
    }
}

/// A client trusting `cas`, optionally limited to one TLS version and to
/// the cipher suites whose names contain `suite`.
pub fn client_for(
    cas: &[&Ca],
    version: Option<&'static rustls::SupportedProtocolVersion>,
    suite: &str,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der.clone()).expect("CA is a root");
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| format!("{:?}", s.suite()).contains(suite));
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match version {
        Some(v) => builder.with_protocol_versions(&[v]),
        None => builder.with_safe_default_protocol_versions(),
    }
    .expect("versions");
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Where a test keeps its certificate and key files.
pub struct Files {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    pub fn new(test: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("surge-tls-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Files {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        }
    }

    /// Writes `leaf` (chain and key) where the server reads them.
    pub fn write(&self, leaf: &Leaf) -> &Files {
        write(&self.cert, &leaf.cert_pem);
        write(&self.key, &leaf.key_pem);
        self
    }

    /// The flags that point the server at these files.
    pub fn flags(&self) -> [String; 4] {
        [
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &Path, text: &str) {
    // Written beside and renamed, as a deploy tool would: a reload never
    // sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write PEM");
    std::fs::rename(&tmp, path).expect("rename PEM");
}

/// A server on ephemeral ports whose public port speaks TLS with `files`.
pub fn start_tls(files: &Files, extra: &[&str]) -> Server {
    let flags = files.flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    crate::common::start(&args)
}

/// A wss:// connection to `server` through tokio-rustls.
pub async fn connect_wss(server: &Server, client: &Arc<ClientConfig>, query: &str) -> Ws {
    let url = format!("wss://localhost:{}/ws{}", server.public_addr.port(), query);
    let tcp = tokio::net::TcpStream::connect(server.public_addr)
        .await
        .expect("TCP connect");
    let connect = tokio_tungstenite::client_async_tls_with_config(
        url,
        tcp,
        None,
        Some(Connector::Rustls(client.clone())),
    );
    let (ws, _) = tokio::time::timeout(WAIT, connect)
        .await
        .expect("wss connect in time")
        .expect("wss connect");
    ws
}

/// The TLS session under a wss:// connection.
pub fn tls_of(ws: &Ws) -> &rustls::ClientConnection {
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Rustls(s) => s.get_ref().1,
        _ => panic!("not a TLS connection"),
    }
}
