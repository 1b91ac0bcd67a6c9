//! A simulated browser's socket, plain (`ws://`) or TLS (`wss://`), driven
//! by mio readiness: reads give plaintext, writes take plaintext, and the
//! TLS records (handshake included) move as the socket allows.
//!
//! It must not block and must not hide a TLS failure: a handshake refused
//! (an untrusted certificate, say) comes back as an error whose text names
//! the reason, so the engine can count it.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, HandshakeKind};

use crate::tls::Configs;

/// How connections of one worker process open their TLS sessions.
#[derive(Clone)]
pub struct Tls {
    pub configs: Configs,
    pub name: ServerName<'static>,
}

/// A TLS session's failure: carried in an `io::Error` of kind
/// `InvalidData`, whose text is rustls' reason.
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsFailure(#[from] pub rustls::Error);

pub enum Transport {
    Plain(TcpStream),
    /// Boxed: rustls' session state is a few hundred bytes, paid only by
    /// TLS connections.
    Tls(Box<TlsSocket>),
}

pub struct TlsSocket {
    tcp: TcpStream,
    session: ClientConnection,
}

impl Transport {
    /// Wraps a connecting socket; with `tls`, the handshake starts with the
    /// first write or flush, resuming a session only if this is a browser
    /// coming `again`.
    pub fn new(tcp: TcpStream, tls: Option<&Tls>, again: bool) -> io::Result<Transport> {
        let Some(tls) = tls else {
            return Ok(Transport::Plain(tcp));
        };
        let config = if again {
            &tls.configs.again
        } else {
            &tls.configs.first
        };
        let session = ClientConnection::new(config.clone(), tls.name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, TlsFailure(e)))?;
        Ok(Transport::Tls(Box::new(TlsSocket { tcp, session })))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(t) => &t.tcp,
        }
    }

    /// A plain socket that returned less than asked is drained, so
    /// edge-triggered readiness needs no further read; a TLS session hands
    /// out one record's plaintext at a time, so only `WouldBlock` says that.
    pub fn short_read_may_leave_more(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Plaintext into `buf`: `Ok(0)` at the end of the stream, `WouldBlock`
    /// when nothing more can be had now.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }

    /// Queues `data` (TLS: encrypts it; before the handshake is done rustls
    /// holds it until it is) and writes what the socket takes now.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.write_all(data),
            Transport::Tls(t) => {
                t.session.writer().write_all(data)?;
                t.flush()
            }
        }
    }

    /// Writes TLS records the socket would not take before (on writability).
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush(),
        }
    }

    /// Whether the TLS handshake resumed a session: `None` for plain
    /// sockets and handshakes not yet done.
    pub fn resumed(&self) -> Option<bool> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) => match t.session.handshake_kind()? {
                HandshakeKind::Resumed => Some(true),
                HandshakeKind::Full | HandshakeKind::FullWithHelloRetryRequest => Some(false),
            },
        }
    }
}

impl TlsSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                // Ok(0): the server's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: the TCP stream ended without close_notify.
                Err(e) => return Err(e),
            }
            match self.session.read_tls(&mut self.tcp) {
                // At the end of the stream rustls' reader says which end it
                // was (close_notify or not) on the next turn.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush()?;
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.session.process_new_packets() {
                // Send the alert that says why, if the socket takes it.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, TlsFailure(e)));
            }
            self.flush()?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::time::Duration;

    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use crate::tls::{client_configs, server_name, TlsArgs};

    /// A rustls server on loopback (a plain blocking one, not Surge) that
    /// sends `total` bytes of plaintext in many records once the handshake
    /// is done.
    fn server(dir: &std::path::Path, total: usize) -> (std::net::SocketAddr, std::path::PathBuf) {
        let cert = crate::testcert::write(dir, "").unwrap();
        let chain: Vec<_> = CertificateDer::pem_file_iter(&cert.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let session = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut stream = rustls::StreamOwned::new(session, tcp);
            let chunk = vec![7u8; 1000];
            for _ in 0..total / chunk.len() {
                stream.write_all(&chunk).unwrap();
            }
            stream.flush().unwrap();
            std::thread::sleep(Duration::from_secs(5));
        });
        (addr, cert.ca)
    }

    #[test]
    fn edge_triggered_reads_get_every_record_a_burst_brings() {
        const TOTAL: usize = 400_000;
        let dir = tempfile::tempdir().unwrap();
        let (addr, ca) = server(dir.path(), TOTAL);
        let args = TlsArgs {
            ca: Some(ca),
            ..TlsArgs::default()
        };
        let tls = Tls {
            configs: client_configs(&args).unwrap(),
            name: server_name(&addr.to_string()).unwrap(),
        };
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut SourceFd(&tcp.as_raw_fd()),
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let mut t = Transport::new(tcp, Some(&tls), false).unwrap();
        t.flush().unwrap();
        // Read as the engine does: a short read ends the turn only where
        // it proves the socket drained; mio's readiness is edge-triggered,
        // so a turn that ends early waits for an event that never comes.
        let mut scratch = [0u8; 4096];
        let mut got = 0;
        let mut events = Events::with_capacity(8);
        while got < TOTAL {
            poll.poll(&mut events, Some(Duration::from_secs(3)))
                .unwrap();
            assert!(!events.is_empty(), "stalled at {got} of {TOTAL} bytes");
            let _ = t.flush();
            loop {
                match t.read(&mut scratch) {
                    Ok(0) => panic!("closed at {got} of {TOTAL} bytes"),
                    Ok(n) => {
                        got += n;
                        if n < scratch.len() && !t.short_read_may_leave_more() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(got, TOTAL);
        assert_eq!(t.resumed(), Some(false));
    }
}
