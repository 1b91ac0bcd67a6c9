//! Accepting with TCP_DEFER_ACCEPT: the kernel holds a connection until its
//! client sends something, so a worker can read the request right after
//! accept. A client that connects and says nothing must still get its 408
//! once the handshake timeout passes, not be held by the kernel forever.

mod common;

use std::io::Read;

use common::*;

#[test]
fn silent_client_still_gets_408_after_the_handshake_timeout() {
    let server = start(&["--handshake-timeout", "1s"]);
    let mut silent = raw(server.public_addr);
    let mut answer = String::new();
    // The server answers 408 and closes by itself; read_to_string ends at
    // EOF, within the helper's bounded read timeout.
    silent
        .read_to_string(&mut answer)
        .expect("server answers and closes");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        metric(
            &server,
            "surge_handshake_failures_total{reason=\"timeout\"}"
        ),
        1
    );
    server.shutdown();
}
