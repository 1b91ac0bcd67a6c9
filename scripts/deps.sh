#!/usr/bin/env bash
# The Debian packages the tests run against, installed when missing, so the
# README's test command works on a fresh machine as well as in CI:
# - chromium, chromium-driver: the real-browser tests (server/tests/browser*.rs),
#   which fail without them unless SURGE_SKIP_BROWSER=1;
# - redis-server: the Redis engine's tests and the cluster benchmark;
# - systemd: `systemd-analyze verify` on deploy/'s units (no running systemd needed).
set -euo pipefail
need=()
bins=(redis-server systemd-analyze)
if [ "${SURGE_SKIP_BROWSER:-}" != 1 ]; then
  bins+=(chromium chromedriver)
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
fi
command -v redis-server >/dev/null || need+=(redis-server)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "FAIL: missing ${need[*]}; install them (Debian: apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing ${need[*]} ..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The tests look these up on PATH the same way and fail without them, so a
# failed install stops here, with the reason.
for bin in "${bins[@]}"; do
  if ! command -v "$bin" >/dev/null; then
    echo "FAIL: $bin is not on PATH after installing ${need[*]:-nothing}" >&2
    exit 1
  fi
done
