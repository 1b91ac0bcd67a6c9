//! Replays the committed fuzz seed corpora (`server/fuzz/corpus/*`) through
//! the same entry points the cargo-fuzz targets use, on stable, as ordinary
//! tests. Inputs a fuzzing run found worth keeping are added to the corpus.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panicked", path.display());
        count += 1;
    }
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn frame_decode_corpus_replays_without_panic() {
    replay("frame_decode", surge::wire::fuzzing::frame_decode);
}

#[test]
fn upgrade_parse_corpus_replays_without_panic() {
    replay("upgrade_parse", surge::wire::fuzzing::upgrade_parse);
}
