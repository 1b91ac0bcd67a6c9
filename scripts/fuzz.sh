#!/usr/bin/env bash
# Runs every cargo-fuzz target of the server for a bounded time each,
# starting from the committed corpora and adding what it finds to them:
#
#   bash scripts/fuzz.sh          # 60 s per target
#   bash scripts/fuzz.sh 600      # ten minutes per target
#
# Needs the nightly toolchain (installed with rustup if missing) and
# cargo-fuzz (installed with cargo if missing). A crash stops the run with
# libFuzzer's exit status and leaves the input in server/fuzz/artifacts/;
# add it to the corpus once fixed, so the stable replay in
# server/tests/fuzz_corpus.rs keeps it fixed.
#
# New inputs land in the corpus directories; minimize them before
# committing (cargo +nightly fuzz cmin TARGET corpus/TARGET).
#
# Not part of CI (scripts/test.sh), measured on this project's 2-core
# machine: installing cargo-fuzz takes 2m11s and building the targets with
# sanitizer coverage 4m26s before a single input runs; with 60 s per target
# that is ~9 minutes on top of a ~5 minute CI, for little that the stable
# corpus replay (server/tests/fuzz_corpus.rs, in CI) does not already pin.
# Run it after changing wire/ or the upgrade parser, and on a schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd server/fuzz
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build
for target in $targets; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 | grep -E '^(stat::|INFO: Seed|Done|==)' || true
  # A crash makes cargo fuzz exit non-zero; the pipeline above hides that,
  # so check for the artifact it leaves.
  if compgen -G "artifacts/$target/crash-*" >/dev/null; then
    echo "fuzz: $target crashed; see server/fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "fuzz: every target ran ${seconds}s without a crash"
