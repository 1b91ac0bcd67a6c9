#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient (cases 1-7 and 10) against
# `surge --echo`, over ws:// and then over wss:// (TLS terminated in the
# worker, with a throwaway self-signed certificate the suite does not
# verify), and checks both results against the same expected.json.
#
# Needs pyenv's Python 2.7.18; installs autobahntestsuite into a local user
# base (./target/autobahn-py) on first use; its Twisted and pyOpenSSL speak
# TLS. Run from the repository root:
#   bash server/autobahn/run.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

py27="$(pyenv root 2>/dev/null)/versions/2.7.18/bin/python"
[ -x "$py27" ] || { echo "autobahn: Python 2.7.18 not found under pyenv" >&2; exit 1; }
export PYTHONUSERBASE="$PWD/target/autobahn-py"
if [ ! -x "$PYTHONUSERBASE/bin/wstest" ]; then
  echo "autobahn: installing autobahntestsuite into $PYTHONUSERBASE"
  "$py27" -m pip install --quiet --user --disable-pip-version-check autobahntestsuite
fi

cargo build --release -p server --bin surge
mkdir -p reports target/autobahn-run
run=target/autobahn-run
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$run/key.pem" -out "$run/cert.pem" 2>/dev/null

surge_pid=
trap '[ -z "$surge_pid" ] || kill $surge_pid 2>/dev/null || true' EXIT

# suite NAME PORT SCHEME [surge flags...]: one pass, its reports under
# reports/NAME, held to expected.json.
suite() {
  local name=$1 port=$2 scheme=$3
  shift 3
  sed -e "s#\"ws://127.0.0.1:9001/ws\"#\"$scheme://127.0.0.1:$port/ws\"#" \
    -e "s#\"\./reports/autobahn\"#\"./reports/$name\"#" \
    -e "s#\"agent\": \"surge\"#\"agent\": \"surge-$scheme\"#" \
    server/autobahn/fuzzingclient.json > "target/autobahn-run/$name.json"
  rm -rf "reports/$name"
  ./target/release/surge --echo --listen "127.0.0.1:$port" --publish-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --max-message 16MiB --max-outbound 64MiB --log warn "$@" &
  surge_pid=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  "$PYTHONUSERBASE/bin/wstest" -m fuzzingclient -s "target/autobahn-run/$name.json" \
    > "reports/$name-wstest.log" 2>&1 || {
    tail -20 "reports/$name-wstest.log" >&2
    exit 1
  }
  kill "$surge_pid" 2>/dev/null || true
  wait "$surge_pid" 2>/dev/null || true
  surge_pid=
  python3 server/autobahn/check.py "reports/$name/index.json" server/autobahn/expected.json
}

suite autobahn 9001 ws
suite autobahn-wss 9002 wss --tls-cert "$run/cert.pem" --tls-key "$run/key.pem"
