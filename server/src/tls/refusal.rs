//! Why a connection on the TLS port never got to speak HTTP: the labels of
//! `surge_tls_refused_total`, one table, so /metrics, the dashboard and
//! docs/tls.md agree.

/// Each is fatal for its connection only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRefusal {
    /// A plain HTTP request (`http://` or `ws://` to the TLS port): answered
    /// 400 in clear text, saying this port speaks TLS, then closed.
    PlainHttp,
    /// Bytes that are neither TLS nor HTTP: a fatal alert, then closed.
    NotTls,
    /// A TLS client whose handshake failed (no common version or cipher
    /// suite, a bad record, an alert from the client).
    HandshakeFailed,
    /// The TLS handshake did not finish within `--handshake-timeout`.
    HandshakeTimeout,
}

impl TlsRefusal {
    /// Metric labels, indexed by [`TlsRefusal::index`].
    pub const LABELS: [&'static str; 4] = [
        "plain_http",
        "not_tls",
        "handshake_failed",
        "handshake_timeout",
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// What the first byte of a record from a client still in its
    /// handshake says: `None` for a TLS record type (change_cipher_spec 20,
    /// alert 21, handshake 22, application data 23).
    pub fn classify_first_byte(first: u8) -> Option<TlsRefusal> {
        match first {
            20..=23 => None,
            // Every HTTP method starts with a capital letter; no TLS record does.
            b'A'..=b'Z' => Some(TlsRefusal::PlainHttp),
            _ => Some(TlsRefusal::NotTls),
        }
    }
}

/// Labels of `surge_tls_handshakes_total`, by how the handshake went.
pub const HANDSHAKE_KINDS: [&str; 2] = ["full", "resumed"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_variants() {
        for (i, r) in [
            TlsRefusal::PlainHttp,
            TlsRefusal::NotTls,
            TlsRefusal::HandshakeFailed,
            TlsRefusal::HandshakeTimeout,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(r.index(), i);
        }
        assert_eq!(TlsRefusal::classify_first_byte(22), None);
        assert_eq!(TlsRefusal::classify_first_byte(20), None);
        assert_eq!(
            TlsRefusal::classify_first_byte(b'G'),
            Some(TlsRefusal::PlainHttp)
        );
        assert_eq!(TlsRefusal::classify_first_byte(0), Some(TlsRefusal::NotTls));
    }
}
