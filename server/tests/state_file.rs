//! `--state-file`: a planned restart of the in-process engine keeps every
//! channel's epoch, offsets and history, so browsers that reconnect recover
//! what they missed; a corrupt or truncated file is ignored, never a crash.

mod common;

use std::path::PathBuf;

use common::*;

fn state_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("surge-test-{}-{name}.state", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_recover_everything_after_a_restart_with_a_state_file() {
    let path = state_path("restart");
    let file = path.to_str().expect("utf-8 temp path");
    let first = start(&["--state-file", file]);
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut ws = connect(&first, &format!("?ch=clinic:{i}")).await;
        assert_eq!(next_json(&mut ws).await["op"], "subscribed");
        clients.push(ws);
    }
    let mut seen = Vec::new();
    for (i, ws) in clients.iter_mut().enumerate() {
        let (epoch, off) = publish_at(&first, &format!("clinic:{i}"), &format!("{{\"n\":{i}}}"));
        let got = next_json(ws).await;
        assert_eq!(got["off"], off);
        seen.push((epoch, off));
    }
    first.shutdown();
    drop(clients);
    assert!(path.exists(), "a graceful stop writes the state file");

    let second = start(&["--state-file", file]);
    // Published while the browsers were away, after the restart.
    for (i, (before, _)) in seen.iter().enumerate() {
        let (epoch, off) = publish_at(
            &second,
            &format!("clinic:{i}"),
            &format!("{{\"n\":{}}}", 100 + i),
        );
        assert_eq!((&epoch, off), (before, 2), "same epoch, next offset");
    }
    let mut recovered = 0;
    for (i, (epoch, off)) in seen.iter().enumerate() {
        let mut ws = connect(&second, "").await;
        send_text(
            &mut ws,
            &format!(
                r#"{{"op":"sub","ch":"clinic:{i}","since":{{"epoch":"{epoch}","off":{off}}}}}"#
            ),
        )
        .await;
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        let missed = next_json(&mut ws).await;
        assert_eq!(missed["data"]["n"], 100 + i as u64, "{missed}");
        recovered += 1;
    }
    assert_eq!(recovered, 5);
    // A browser that never saw anything still gets the last value at once.
    let mut fresh = connect(&second, "?ch=clinic:0").await;
    assert_eq!(next_json(&mut fresh).await["off"], 2);
    assert_eq!(next_json(&mut fresh).await["snap"], true);
    second.shutdown();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_state_file_is_ignored_and_epochs_start_fresh() {
    let path = state_path("corrupt");
    let file = path.to_str().expect("utf-8 temp path");
    let first = start(&["--state-file", file]);
    let (epoch, _) = publish_at(&first, "clinic:9", "1");
    first.shutdown();
    let whole = std::fs::read(&path).expect("state written");

    for broken in [whole[..whole.len() / 2].to_vec(), b"garbage\n{}".to_vec()] {
        std::fs::write(&path, &broken).expect("write");
        let server = start(&["--state-file", file]);
        let mut ws = connect(&server, "").await;
        send_text(
            &mut ws,
            &format!(r#"{{"op":"sub","ch":"clinic:9","since":{{"epoch":"{epoch}","off":1}}}}"#),
        )
        .await;
        let reply = next_json(&mut ws).await;
        assert_eq!(
            reply["recovered"], false,
            "nothing trusted from a bad file: {reply}"
        );
        let (new_epoch, off) = publish_at(&server, "clinic:9", "2");
        assert_ne!(new_epoch, epoch);
        assert_eq!(off, 1);
        server.shutdown();
    }
    let _ = std::fs::remove_file(&path);
}
