#!/usr/bin/env bash
# Every test Surge has: unit, integration (real server, real sockets,
# tokio-tungstenite), property tests, fuzz-corpus replay, and the
# Autobahn|Testsuite (cases 1-7 and 10) against `surge --echo`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
bash server/autobahn/run.sh
