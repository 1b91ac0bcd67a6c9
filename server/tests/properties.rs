//! Property tests for the wire code: any frame we encode decodes back to
//! itself however the bytes are split, masking is the RFC's byte-wise XOR
//! (and so an involution), and no input makes the decoders panic.

use proptest::prelude::*;
use surge::wire::frame::{decode_header, encode_frame, OpCode, Role};
use surge::wire::mask::apply_mask;

fn opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
        Just(OpCode::Close)
    ]
}

/// Decodes every whole frame in `buf` (masked by a client) and unmasks it.
fn decode_all(mut buf: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(Some(h)) = decode_header(buf, Role::Server) {
        let end = h.header_len + h.payload_len as usize;
        if end > buf.len() {
            break;
        }
        let mut payload = buf[h.header_len..end].to_vec();
        apply_mask(&mut payload, h.mask.unwrap());
        out.push((h.opcode, payload));
        buf = &buf[end..];
    }
    out
}

proptest! {
    #[test]
    fn encoded_frames_decode_back_whatever_the_read_boundaries(
        frames in prop::collection::vec((opcode(), prop::collection::vec(any::<u8>(), 0..125), any::<[u8; 4]>()), 1..6),
        big in prop::collection::vec(any::<u8>(), 0..70_000),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (op, payload, key) in &frames {
            encode_frame(&mut wire, *op, payload, Some(*key));
            expected.push((*op, payload.clone()));
        }
        encode_frame(&mut wire, OpCode::Binary, &big, Some([9, 8, 7, 6]));
        expected.push((OpCode::Binary, big.clone()));
        // Feed the stream in arbitrary pieces, as reads would deliver it.
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len())).collect();
        points.sort_unstable();
        let mut got = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([wire.len()]) {
            pending.extend_from_slice(&wire[last..p]);
            last = p;
            let decoded = decode_all(&pending);
            let used: usize = decoded.iter().map(|(_, pl)| {
                let n = pl.len();
                2 + if n < 126 { 0 } else if n < 65536 { 2 } else { 8 } + 4 + n
            }).sum();
            pending.drain(..used);
            got.extend(decoded);
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn masking_xors_each_byte_with_the_key_byte_at_its_position(
        data in prop::collection::vec(any::<u8>(), 0..300),
        key in any::<[u8; 4]>(),
    ) {
        // RFC 6455 section 5.3 spelled out byte by byte: a mask that does
        // nothing, or shifts the key, fails here (twice-is-identity cannot).
        let expected: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        let mut buf = data.clone();
        apply_mask(&mut buf, key);
        prop_assert_eq!(buf, expected);
    }

    #[test]
    fn masking_twice_gives_back_the_input(data in prop::collection::vec(any::<u8>(), 0..300), key in any::<[u8; 4]>()) {
        let mut buf = data.clone();
        apply_mask(&mut buf, key);
        apply_mask(&mut buf, key);
        prop_assert_eq!(buf, data);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        surge::wire::fuzzing::frame_decode(&data);
        surge::wire::fuzzing::upgrade_parse(&data);
    }

    #[test]
    fn arbitrary_request_text_never_panics_the_upgrade_parser(
        path in "[ -~]{0,40}", header in "[ -~]{0,60}", value in "[ -~]{0,60}",
    ) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}: {value}\r\n\r\n");
        surge::wire::fuzzing::upgrade_parse(req.as_bytes());
    }
}
