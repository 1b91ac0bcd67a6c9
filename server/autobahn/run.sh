#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient (cases 1-7 and 10) against
# `surge --echo` and checks the results against expected.json.
#
# Needs pyenv's Python 2.7.18; installs autobahntestsuite into a local user
# base (./target/autobahn-py) on first use. Run from the repository root:
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
rm -rf reports/autobahn
mkdir -p reports
./target/release/surge --echo --listen 127.0.0.1:9001 --publish-listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --max-message 16MiB --max-outbound 64MiB --log warn &
surge_pid=$!
trap 'kill $surge_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/9001) 2>/dev/null && break
  sleep 0.1
done

"$PYTHONUSERBASE/bin/wstest" -m fuzzingclient -s server/autobahn/fuzzingclient.json > reports/autobahn-wstest.log 2>&1 || {
  tail -20 reports/autobahn-wstest.log >&2
  exit 1
}
python3 server/autobahn/check.py reports/autobahn/index.json server/autobahn/expected.json
