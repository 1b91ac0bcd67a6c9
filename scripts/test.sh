#!/usr/bin/env bash
# Every test Surge has: unit, integration (real server, real sockets,
# tokio-tungstenite, headless Chromium), property tests, fuzz-corpus replay,
# the Autobahn|Testsuite (cases 1-7 and 10) against `surge --echo`, and the
# macro benchmark at a small N so it cannot rot (it checks that the command
# completes and writes well-formed JSON, not how fast anything is).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
bash server/autobahn/run.sh
cargo run --release -p benches -- all --conns 500 --publications 5 --json target/bench/ci.json
python3 - <<'PY'
import json
d = json.load(open("target/bench/ci.json"))
checks = {
    "surge fan-out delivered everything": d["surge"]["fanout"]["deliveries"] == d["surge"]["fanout"]["deliveries_expected"] > 0,
    "baseline fan-out ran": d["baseline"]["fanout"]["deliveries"] > 0,
    "memory measured at three sizes": all(len(d[k]["memory"]) == 3 for k in ("surge", "baseline")),
    "floor measured": d["floor"]["deliveries_per_second"] > 0,
    "table present": len(d["table"]) >= 10,
}
for name, ok in checks.items():
    print(("ok   " if ok else "FAIL ") + name)
failed = sum(not ok for ok in checks.values())
print(f"benchmark: {len(checks) - failed} passed, {failed} failed")
raise SystemExit(1 if failed else 0)
PY
