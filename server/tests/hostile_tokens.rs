//! Private subscriptions outliving their token, tried for real: one is
//! ended at expiry with a `token_expired` error while its connection stays
//! open; one kept alive by a refresh; a token of the previous secret during
//! a rotation; a prefix token that must not open a longer user id.

mod common;

use common::*;
use serde_json::{json, Value};
use surge::channels::token::{unix_now, TokenKey};

const SECRET: &str = "booking-backend-shared-secret-2";
const OLD_SECRET: &str = "booking-backend-shared-secret-1";

fn token_with(secret: &str, scope: &str, expires: u64) -> String {
    TokenKey::new(secret.as_bytes())
        .unwrap()
        .mint(scope, expires)
}

async fn command(ws: &mut Ws, cmd: Value) -> Value {
    send_text(ws, &cmd.to_string()).await;
    next_json(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_subscription_ends_at_token_expiry_and_the_connection_stays() {
    let server = start(&["--token-secret", SECRET]);
    let mut ws = connect(&server, "?ch=clinic").await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let short = token_with(SECRET, "user/5", unix_now() + 1);
    let reply = command(&mut ws, json!({"op":"sub","ch":"user/5","token":short})).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    // Within a couple of seconds the token lapses and the server says so.
    let ended = next_json(&mut ws).await;
    assert_eq!(
        (
            ended["op"].as_str(),
            ended["code"].as_str(),
            ended["ch"].as_str()
        ),
        (Some("error"), Some("token_expired"), Some("user/5")),
        "{ended}"
    );
    // The private channel no longer reaches it; the public one still does.
    publish_async(&server, "user/5", r#""secret""#).await;
    publish_async(&server, "clinic", r#""open""#).await;
    let next = next_json(&mut ws).await;
    assert_eq!(
        (next["ch"].as_str(), &next["data"]),
        (Some("clinic"), &json!("open"))
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_keeps_a_private_subscription_past_the_first_token() {
    let server = start(&["--token-secret", SECRET]);
    let mut ws = connect(&server, "").await;
    let short = token_with(SECRET, "user/6", unix_now() + 1);
    let reply = command(&mut ws, json!({"op":"sub","ch":"user/6","token":short})).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    let forged = token_with("somebody-else's-secret-000", "user/6", unix_now() + 3600);
    let refused = command(
        &mut ws,
        json!({"op":"refresh","ch":"user/6","token":forged}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let long = token_with(SECRET, "user/6", unix_now() + 3600);
    let refreshed = command(&mut ws, json!({"op":"refresh","ch":"user/6","token":long})).await;
    assert_eq!(refreshed, json!({"op":"refreshed","ch":"user/6"}));
    // Past the first token's expiry (bounded sleep), it still receives.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    publish_async(&server, "user/6", r#""confirmed""#).await;
    let next = next_json(&mut ws).await;
    assert_eq!(
        (next["ch"].as_str(), &next["data"]),
        (Some("user/6"), &json!("confirmed"))
    );
    let unheld = command(&mut ws, json!({"op":"refresh","ch":"user/7","token":long})).await;
    assert_eq!(unheld["code"], "bad_request", "{unheld}");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_secret_works_during_rotation_and_prefixes_stop_at_a_slash() {
    let server = start(&[
        "--token-secret",
        SECRET,
        "--token-secret-previous",
        OLD_SECRET,
    ]);
    let mut ws = connect(&server, "").await;
    let old = token_with(OLD_SECRET, "user/88*", unix_now() + 60);
    let reply = command(
        &mut ws,
        json!({"op":"sub","ch":"user/88/receipts","token":old}),
    )
    .await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    let reply = command(&mut ws, json!({"op":"sub","ch":"user/881234","token":old})).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let stranger = token_with("a-third-secret-nobody-knows", "user/88*", unix_now() + 60);
    let reply = command(
        &mut ws,
        json!({"op":"sub","ch":"user/88/x","token":stranger}),
    )
    .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    server.shutdown();
}
