//! Cross-site WebSocket hijacking, tried for real: another site's page
//! (an `Origin` that is not this host) is refused 403 with a reason and
//! counted, by default; a same-origin page and a non-browser client (no
//! `Origin`) get in; `--allowed-origin '*'` lets anyone in, explicitly.

mod common;

use common::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error;

/// An upgrade sent with `origin`; the HTTP status the server answered.
async fn status_with_origin(server: &surge::Server, origin: Option<&str>) -> (u16, String) {
    let mut request = format!("ws://{}/ws?ch=o", server.public_addr)
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, response)) => {
            assert_eq!(next_json(&mut ws).await["op"], "subscribed");
            (response.status().as_u16(), String::new())
        }
        Err(Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_upgrade_is_refused_403_by_default() {
    let server = start(&[]);
    let (status, why) = status_with_origin(&server, Some("https://evil.example")).await;
    assert_eq!(status, 403);
    assert!(why.contains("https://evil.example"), "{why}");
    assert_eq!(
        metric(&server, "surge_handshake_failures_total{reason=\"origin\"}"),
        1
    );
    let same = format!("http://{}", server.public_addr);
    assert_eq!(status_with_origin(&server, Some(&same)).await.0, 101);
    assert_eq!(status_with_origin(&server, None).await.0, 101);
    // Meanwhile the publish path is untouched.
    publish_async(&server, "o", "1").await;
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origin_star_lets_any_page_in() {
    let server = start(&["--allowed-origin", "*"]);
    let (status, _) = status_with_origin(&server, Some("https://elsewhere.example")).await;
    assert_eq!(status, 101);
    server.shutdown();
}
