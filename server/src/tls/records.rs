//! TLS records after the handshake: what an established TLS connection
//! keeps, and how its records are sealed and opened.
//!
//! rustls runs the handshake (`session.rs`); once it is done the session is
//! handed over through rustls' kernel-connection API, which exists for
//! exactly this (kTLS and other record layers of one's own), and only the
//! two record keys and their sequence numbers stay: about 1.1 KB instead of
//! the 2.2 KB (and more, with its state machine and key schedule) that a
//! whole rustls connection holds for as long as it lives. The record
//! protection itself is still rustls' (its ring `MessageEncrypter` and
//! `MessageDecrypter`): this file frames records and counts them; it does
//! no cryptography of its own.
//!
//! What it gives up: a TLS 1.3 KeyUpdate from the client (which needs the
//! traffic secrets we dropped) closes the connection; the browser reconnects
//! with a resumed handshake and recovers with `since`. Browsers send none on
//! connections that carry a few commands upstream.

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{
    ConnectionTrafficSecrets, ContentType, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite,
};

use crate::tls::session::{OutBuf, TlsError};

/// Largest plaintext in one record (RFC 8446 section 5.1).
pub const MAX_FRAGMENT: usize = 16 * 1024;
/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// Largest record body a peer may send: TLS 1.2 allows 2048 bytes of
/// expansion over the plaintext (RFC 5246 section 6.2.3), 1.3 only 256.
const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 2048;
/// Alert level and description of `close_notify` (RFC 8446 section 6.1).
const CLOSE_NOTIFY: [u8; 2] = [1, 0];
/// TLS 1.3 handshake message type of KeyUpdate (RFC 8446 section 4.6.3).
const KEY_UPDATE: u8 = 24;

/// An established connection's record state.
pub struct Traffic {
    tx: Box<dyn MessageEncrypter>,
    rx: Box<dyn MessageDecrypter>,
    tx_seq: u64,
    rx_seq: u64,
    /// Records one key may seal before it is no longer safe (the suite's
    /// confidentiality limit, 2^24.5 for AES-GCM); past it we close.
    limit: u64,
}

/// What [`Traffic::open`] found.
pub struct Opened {
    /// Bytes of whole records used; the rest is an incomplete record.
    pub consumed: usize,
    /// The peer sent `close_notify`.
    pub peer_closed: bool,
}

impl Traffic {
    /// Record state from the secrets rustls handed over with the session.
    pub fn new(
        secrets: ExtractedSecrets,
        suite: SupportedCipherSuite,
    ) -> Result<Traffic, TlsError> {
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let (tx, rx, limit) = match suite {
            SupportedCipherSuite::Tls13(suite) => {
                let (tx_key, tx_iv) = parts(tx)?;
                let (rx_key, rx_iv) = parts(rx)?;
                (
                    suite.aead_alg.encrypter(tx_key, tx_iv),
                    suite.aead_alg.decrypter(rx_key, rx_iv),
                    suite.common.confidentiality_limit,
                )
            }
            SupportedCipherSuite::Tls12(suite) => {
                // rustls hands TLS 1.2 GCM ivs over as salt (4 bytes) then
                // explicit nonce (8); ChaCha20's as one 12-byte iv.
                let salt = match tx {
                    ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => 12,
                    _ => 4,
                };
                let (tx_key, tx_iv) = parts(tx)?;
                let (rx_key, rx_iv) = parts(rx)?;
                let (write_iv, explicit) = tx_iv.as_ref().split_at(salt);
                (
                    suite.aead_alg.encrypter(tx_key, write_iv, explicit),
                    suite.aead_alg.decrypter(rx_key, &rx_iv.as_ref()[..salt]),
                    suite.common.confidentiality_limit,
                )
            }
        };
        Ok(Traffic {
            tx,
            rx,
            tx_seq,
            rx_seq,
            limit,
        })
    }

    /// Seals `frames` as application data into `out`, as few records as
    /// 16 KiB allows, read straight from the frames (no copy first); then,
    /// with `close`, `close_notify`.
    pub fn seal(
        &mut self,
        frames: &[&[u8]],
        close: bool,
        out: &mut OutBuf,
    ) -> Result<(), TlsError> {
        let mut rest = OutboundChunks::new(frames);
        while !rest.is_empty() {
            let (now, later) = rest.split_at(MAX_FRAGMENT);
            self.seal_record(ContentType::ApplicationData, now, out)?;
            rest = later;
        }
        if close {
            self.seal_record(
                ContentType::Alert,
                OutboundChunks::Single(&CLOSE_NOTIFY),
                out,
            )?;
        }
        Ok(())
    }

    fn seal_record(
        &mut self,
        typ: ContentType,
        payload: OutboundChunks<'_>,
        out: &mut OutBuf,
    ) -> Result<(), TlsError> {
        if self.tx_seq >= self.limit {
            return Err(TlsError::Encrypt(
                "the key's record limit is reached".into(),
            ));
        }
        let message = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload,
        };
        let sealed = self.tx.encrypt(message, self.tx_seq)?;
        self.tx_seq += 1;
        out.extend(&sealed.encode());
        Ok(())
    }

    /// Opens the whole records in `incoming`, in place; application data
    /// is appended to `plain`. Stops at an incomplete record, or after
    /// `close_notify`.
    pub fn open(&mut self, incoming: &mut [u8], plain: &mut Vec<u8>) -> Result<Opened, TlsError> {
        let mut pos = 0;
        while let Some(header) = incoming.get(pos..pos + HEADER) {
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len > MAX_CIPHERTEXT {
                return Err(TlsError::BadRecord("record too long"));
            }
            let end = pos + HEADER + len;
            if end > incoming.len() {
                break;
            }
            let typ = ContentType::from(header[0]);
            let version = ProtocolVersion::from(u16::from_be_bytes([header[1], header[2]]));
            let record = InboundOpaqueMessage::new(typ, version, &mut incoming[pos + HEADER..end]);
            let opened = self.rx.decrypt(record, self.rx_seq)?;
            self.rx_seq += 1;
            pos = end;
            match (opened.typ, opened.payload) {
                (ContentType::ApplicationData, data) => plain.extend_from_slice(data),
                (ContentType::Alert, [_, 0]) => {
                    return Ok(Opened {
                        consumed: pos,
                        peer_closed: true,
                    })
                }
                (ContentType::Alert, [_, description]) => {
                    return Err(TlsError::Alert(*description))
                }
                (ContentType::Handshake, [KEY_UPDATE, ..]) => return Err(TlsError::KeyUpdate),
                _ => return Err(TlsError::BadRecord("unexpected record after the handshake")),
            }
        }
        Ok(Opened {
            consumed: pos,
            peer_closed: false,
        })
    }
}

/// The key and iv of one direction.
fn parts(
    secrets: ConnectionTrafficSecrets,
) -> Result<(rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv), TlsError> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(TlsError::BadRecord("a cipher suite we do not offer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};
    use rustls::crypto::ring::cipher_suite;

    /// Two ends of one TLS 1.3 connection: what one seals the other opens.
    fn pair(suite: SupportedCipherSuite) -> (Traffic, Traffic) {
        let secrets = |a: u8, b: u8| ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([a; 32]),
            iv: Iv::new([b; 12]),
        };
        let server = ExtractedSecrets {
            tx: (3, secrets(1, 2)),
            rx: (5, secrets(3, 4)),
        };
        let client = ExtractedSecrets {
            tx: (5, secrets(3, 4)),
            rx: (3, secrets(1, 2)),
        };
        (
            Traffic::new(server, suite).unwrap(),
            Traffic::new(client, suite).unwrap(),
        )
    }

    #[test]
    fn frames_sealed_together_open_byte_exact_even_when_split_across_reads() {
        for suite in [
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ] {
            let (mut server, mut client) = pair(suite);
            let big = vec![7u8; 40_000];
            let mut out = OutBuf::default();
            server
                .seal(&[b"one", &big, b"three"], true, &mut out)
                .unwrap();
            let mut wire = out.filled().to_vec();
            let mut plain = Vec::new();
            // The first 100 bytes alone: no whole record yet.
            let first = client.open(&mut wire[..100], &mut plain).unwrap();
            assert_eq!((first.consumed, first.peer_closed), (0, false));
            let rest = client.open(&mut wire, &mut plain).unwrap();
            assert!(rest.peer_closed, "close_notify seen");
            let mut expected = b"one".to_vec();
            expected.extend_from_slice(&big);
            expected.extend_from_slice(b"three");
            assert_eq!(plain, expected);
        }
    }

    #[test]
    fn a_tampered_or_oversized_record_is_refused() {
        let (mut server, mut client) = pair(cipher_suite::TLS13_AES_256_GCM_SHA384);
        let mut out = OutBuf::default();
        server.seal(&[b"hello"], false, &mut out).unwrap();
        let mut wire = out.filled().to_vec();
        wire[7] ^= 1;
        assert!(client.open(&mut wire, &mut Vec::new()).is_err());
        let mut huge = vec![23, 3, 3, 0xff, 0xff];
        assert!(matches!(
            client.open(&mut huge, &mut Vec::new()),
            Err(TlsError::BadRecord(_))
        ));
    }
}
