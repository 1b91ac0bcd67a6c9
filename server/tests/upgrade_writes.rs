//! The upgrade's answer leaves in one write: the 101, the `subscribed`
//! replies to the `?ch=` subscriptions and a channel's last value reach the
//! browser as one TCP segment. The kernel counts the segments (TCP_INFO on
//! the client's socket), so the test does not rely on our own accounting.

mod common;

use std::net::TcpStream;
use std::os::fd::AsRawFd;

use common::*;
use surge::wire::frame::OpCode;

/// Segments carrying data that this socket has received, as the kernel
/// counts them.
fn data_segments_in(s: &TcpStream) -> u32 {
    // SAFETY: an all-zero tcp_info is a valid value of this plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is open for the duration of the call, and `info` and
    // `len` are ours, sized as the kernel is told.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

#[test]
fn upgrade_answer_acknowledgements_and_last_value_arrive_in_one_segment() {
    let server = start(&[]);
    publish(&server, "clinic:b", r#"{"free":3}"#);
    let mut s = raw_ws(server.public_addr, "/ws?ch=clinic:a&ch=clinic:b");
    let mut texts = Vec::new();
    for _ in 0..3 {
        let (op, payload) = read_frame(&mut s).expect("a frame after the 101");
        assert_eq!(op, OpCode::Text);
        texts.push(String::from_utf8(payload).expect("UTF-8"));
    }
    assert!(
        texts[0].contains(r#""op":"subscribed","ch":"clinic:a""#),
        "{texts:?}"
    );
    assert!(
        texts[1].contains(r#""op":"subscribed","ch":"clinic:b""#),
        "{texts:?}"
    );
    assert!(texts[2].contains(r#""free":3"#), "{texts:?}");
    assert_eq!(data_segments_in(&s), 1, "101 + 2 replies + last value");
}

#[test]
fn a_subscriber_connected_with_one_write_still_receives_publications() {
    let server = start(&[]);
    let mut s = raw_ws(server.public_addr, "/ws?ch=clinic:c");
    let (_, reply) = read_frame(&mut s).expect("subscribed reply");
    assert_eq!(reply, br#"{"op":"subscribed","ch":"clinic:c"}"#);
    publish(&server, "clinic:c", "7");
    let (op, payload) = read_frame(&mut s).expect("publication");
    assert_eq!(op, OpCode::Text);
    assert_publication(&payload, "clinic:c", serde_json::json!(7));
}
