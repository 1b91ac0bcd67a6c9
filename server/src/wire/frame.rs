//! RFC 6455 frame headers (section 5.2): decoding what a peer sent, encoding
//! what we send, and the per-frame rules of sections 5.1-5.5.
//!
//! It looks at bytes and says what they are. It must not buffer, allocate on
//! decode, know about messages across frames, or touch a socket.

use crate::wire::mask::apply_mask;

/// Which end of the connection we are: it decides which way masking must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We are the server: every frame we receive must be masked.
    Server,
    /// We are a client (client-sim): every frame we receive must be unmasked.
    Client,
}

/// Frame opcodes defined by RFC 6455; the others are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Control frames (close, ping, pong) may interleave with fragments.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded frame header. The payload follows it in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes taken by the header itself (2 to 14).
    pub header_len: usize,
}

/// Longest header: 2 bytes + 8 bytes of length + 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;
/// RFC 6455 section 5.5: control frame payloads are at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A frame that breaks RFC 6455. Every variant is fatal to the connection and
/// maps to close code 1002 (protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("client frame is not masked")]
    Unmasked,
    #[error("server frame is masked")]
    Masked,
    #[error("64-bit payload length with the most significant bit set")]
    LengthOverflow,
}

/// Decodes the frame header at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole header; the
/// caller reads more and asks again. Never reads past the header.
pub fn decode_header(buf: &[u8], role: Role) -> Result<Option<FrameHeader>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0f).ok_or(FrameError::ReservedOpcode(b0 & 0x0f))?;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(FrameError::Unmasked),
        (Role::Client, true) => return Err(FrameError::Masked),
        _ => {}
    }
    let (payload_len, len_bytes) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    if payload_len >> 63 != 0 {
        return Err(FrameError::LengthOverflow);
    }
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::FragmentedControl);
        }
        if payload_len > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::ControlTooLong);
        }
    }
    let mut header_len = 2 + len_bytes;
    let mask = if masked {
        let Some(m) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Writes a frame header into `out` and returns its length.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: usize,
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = 2;
    if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
    } else if let Ok(short) = u16::try_from(payload_len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        len = 4;
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        len = 10;
    }
    if let Some(key) = mask {
        out[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    len
}

/// Appends one whole frame (header and payload, masked when `mask` is given)
/// to `out`. Used for every frame Surge sends and for client-sim's frames.
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let header_len = encode_header(&mut header, true, opcode, mask, payload.len());
    out.reserve(header_len + payload.len());
    out.extend_from_slice(&header[..header_len]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key);
    }
}

/// A whole close frame carrying `code` and `reason` (truncated to fit the
/// 125-byte control payload on a character boundary).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    encode_frame(&mut out, OpCode::Close, &payload, mask);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [1, 2, 3, 4];

    type Expected = Result<Option<FrameHeader>, FrameError>;

    /// Bytes in, expected decode out.
    #[test]
    fn header_decoding_table() {
        use FrameError::*;
        let ok = |fin, opcode, payload_len, header_len| -> Expected {
            Ok(Some(FrameHeader {
                fin,
                opcode,
                mask: Some(KEY),
                payload_len,
                header_len,
            }))
        };
        let cases: &[(&[u8], Expected)] = &[
            (&[], Ok(None)),
            (&[0x81], Ok(None)),
            (&[0x81, 0x85, 1, 2, 3], Ok(None)),
            (&[0x81, 0x85, 1, 2, 3, 4], ok(true, OpCode::Text, 5, 6)),
            (&[0x01, 0x80, 1, 2, 3, 4], ok(false, OpCode::Text, 0, 6)),
            (&[0x82, 0xfe, 0x01], Ok(None)),
            (
                &[0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4],
                ok(true, OpCode::Binary, 256, 8),
            ),
            (
                &[0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
                ok(true, OpCode::Binary, 65536, 14),
            ),
            (&[0x89, 0xfd, 1, 2, 3, 4], ok(true, OpCode::Ping, 125, 6)),
            (&[0x81, 0x05], Err(Unmasked)),
            (&[0xc1, 0x85], Err(ReservedBits)),
            (&[0xa1, 0x85], Err(ReservedBits)),
            (&[0x91, 0x85], Err(ReservedBits)),
            (&[0x83, 0x80], Err(ReservedOpcode(3))),
            (&[0x8b, 0x80], Err(ReservedOpcode(0xb))),
            (&[0x09, 0x80, 1, 2, 3, 4], Err(FragmentedControl)),
            (&[0x89, 0xfe, 0, 126], Err(ControlTooLong)),
            (
                &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0],
                Err(LengthOverflow),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                &decode_header(bytes, Role::Server),
                expected,
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn client_role_refuses_masked_frames() {
        assert_eq!(
            decode_header(&[0x81, 0x85], Role::Client),
            Err(FrameError::Masked)
        );
        let h = decode_header(&[0x81, 0x05], Role::Client).unwrap().unwrap();
        assert_eq!((h.mask, h.header_len, h.payload_len), (None, 2, 5));
    }

    #[test]
    fn encoded_frames_decode_back_for_each_length_form() {
        for len in [0usize, 1, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            for mask in [None, Some(KEY)] {
                let mut out = Vec::new();
                encode_frame(&mut out, OpCode::Binary, &payload, mask);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let h = decode_header(&out, role).unwrap().unwrap();
                assert_eq!(h.payload_len as usize, len);
                assert_eq!(out.len(), h.header_len + len);
                let mut body = out[h.header_len..].to_vec();
                if let Some(key) = h.mask {
                    apply_mask(&mut body, key);
                }
                assert_eq!(body, payload);
            }
        }
    }

    #[test]
    fn close_frame_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1000, &reason, None);
        let h = decode_header(&frame, Role::Client).unwrap().unwrap();
        assert!(h.payload_len <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&frame[h.header_len + 2..]).is_ok());
    }
}
