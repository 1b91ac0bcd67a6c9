#!/usr/bin/env bash
# Every test Surge has: unit, integration (real server, real sockets,
# tokio-tungstenite, headless Chromium), property tests, fuzz-corpus replay,
# the Autobahn|Testsuite (cases 1-7 and 10) against `surge --echo`, and the
# macro benchmark at a small N so it cannot rot. The benchmark check is not
# about speed (timings are noise at this N) but about values that can be
# wrong: every connection made, every delivery counted exactly once against
# the closed form, idle memory within its documented budget.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [ "${SURGE_SKIP_BROWSER:-}" = 1 ]; then
  echo "WARNING: SURGE_SKIP_BROWSER=1: the real-browser test will not run" >&2
fi
cargo test --workspace --all-targets
# Over ws:// and over wss:// (TLS in the worker), same expectations.
bash server/autobahn/run.sh
# 4000 connections, not fewer: below that the server's fixed memory swamps
# the per-connection figure the budget check reads (one run here: 377 B per
# idle connection at N=500, 131 B at N=4000), and it adds seconds, not minutes.
cargo run --release -p benches -- all --conns 4000 --publications 5 --json target/bench/ci.json
# 20,000 connections over 3 Surge nodes joined through a real redis-server;
# exits non-zero unless every connection and every delivery is there.
cargo run --release -p benches -- million --conns 20000 --procs 3 --kernel check --json target/million/ci.json
# The same cluster holding one waiting room in Redis (issue 12's 100,000 run
# at a small N): exits non-zero on an order violation, a duplicate, a lost
# ticket or a user never admitted.
cargo run --release -p benches -- million --scenario queue --conns 3000 --procs 2 --kernel check --skip-build --admit-per-minute 60000 --opens-in 5 --json target/million/ci-queue.json
# The other two benchmark commands at a small N, so they cannot rot: the
# kernel-floor comparison (pinned, one run) and Redis against the in-process
# engine (exits non-zero if either fan-out loses or duplicates a delivery).
cargo run --release -p benches -- floor-gap --conns 1000 --publications 3 --repeats 2 --skip-build
cargo run --release -p benches -- engines --conns 2000 --publications 5 --skip-build
# wss:// beside ws:// for Surge and the tokio-rustls baseline (issue 15);
# exits non-zero if a connection or delivery is missing or an idle Surge
# wss connection holds more than its 2 KiB of user space.
cargo run --release -p benches -- tls --conns 4000 --publications 5 --skip-build
python3 - <<'PY'
import json

# README.md and docs/benchmarks.md (DESIGN.md section 1): at most 256 bytes
# of user space per idle connection subscribed to two channels.
IDLE_BUDGET = 256

d = json.load(open("target/bench/ci.json"))
conns, pubs = d["connections"], d["publications"]
checks = []

def check(name, ok, shown):
    checks.append((name, bool(ok), shown))

for side in ("surge", "baseline"):
    for m in d[side]["memory"]:
        check(f"{side} idle N={m['connections']}: every connection made",
              m["connected"] == m["connections"],
              f"{m['connected']} of {m['connections']}")
    f = d[side]["fanout"]
    check(f"{side} fan-out: every connection made", f["connections"] == conns,
          f"{f['connections']} of {conns}")
    check(f"{side} fan-out: no gap, no duplicate", f["gaps"] == 0 and f["duplicates"] == 0,
          f"gaps {f['gaps']}, duplicates {f['duplicates']}")
    # One clinic: every connection is owed every publication, once.
    check(f"{side} fan-out: connections x publications delivered",
          f["deliveries"] == f["deliveries_expected"] == conns * pubs,
          f"{f['deliveries']} delivered, client-sim expected {f['deliveries_expected']}, "
          f"{conns} x {pubs} = {conns * pubs}")
idle = d["surge"]["memory"][-1]
per_conn = idle["bytes_per_connection"]
check(f"surge user-space bytes per idle connection at N={idle['connections']} within {IDLE_BUDGET}",
      per_conn is not None and 0 <= per_conn <= IDLE_BUDGET,
      "not measured" if per_conn is None else f"{per_conn:.0f} B")
floor = d["floor"]["deliveries_per_second"]
check("floor measured", floor is not None and floor > 0, f"{floor or 0:.0f} deliveries/s")
missing = [r["metric"] for r in d["table"] if not isinstance(r["surge"], (int, float))]
check("every table row has a Surge figure", not missing,
      f"{len(d['table'])} rows" + (f", missing: {missing}" if missing else ""))

for name, ok, shown in checks:
    print(("ok   " if ok else "FAIL ") + f"{name}: {shown}")
failed = sum(not ok for _, ok, _ in checks)
print(f"benchmark: {len(checks) - failed} passed, {failed} failed")
raise SystemExit(1 if failed else 0)
PY
