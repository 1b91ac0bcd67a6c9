//! Entry points for the fuzz targets in `server/fuzz`, kept in the library so
//! the committed seed corpus replays as ordinary tests on stable. Each one
//! feeds arbitrary bytes to a wire parser and checks what must hold for any
//! input: no panic, and decoded values consistent with the bytes.

use crate::wire::frame::{decode_header, encode_header, Role, MAX_HEADER_LEN};
use crate::wire::handshake::{parse_request, validate_upgrade};
use crate::wire::mask::apply_mask;

/// Decodes frames back to back from `data` in both roles, unmasking every
/// complete payload, and checks that each header re-encodes to itself.
pub fn frame_decode(data: &[u8]) {
    for role in [Role::Server, Role::Client] {
        let mut rest = data;
        while let Ok(Some(h)) = decode_header(rest, role) {
            assert!(h.header_len <= MAX_HEADER_LEN && h.header_len <= rest.len());
            let mut again = [0u8; MAX_HEADER_LEN];
            let len = usize::try_from(h.payload_len).unwrap_or(usize::MAX);
            if len <= usize::MAX / 2 {
                let n = encode_header(&mut again, h.fin, h.opcode, h.mask, len);
                assert_eq!(
                    decode_header(&again[..n], role),
                    Ok(Some(crate::wire::FrameHeader { header_len: n, ..h }))
                );
            }
            let Some(end) = h
                .header_len
                .checked_add(len)
                .filter(|&end| end <= rest.len())
            else {
                break;
            };
            let mut payload = rest[h.header_len..end].to_vec();
            if let Some(key) = h.mask {
                apply_mask(&mut payload, key);
            }
            rest = &rest[end..];
        }
    }
}

/// Parses `data` as an upgrade request head and validates it.
pub fn upgrade_parse(data: &[u8]) {
    if let Ok(Some(req)) = parse_request(data, crate::limits::MAX_REQUEST_HEAD) {
        assert!(req.head_len <= data.len());
        let _ = validate_upgrade(&req);
        if let Some(query) = req.query {
            for _ in form_urlencoded::parse(query.as_bytes()) {}
        }
    }
}
