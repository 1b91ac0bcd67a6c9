#!/usr/bin/env python3
"""Checks an Autobahn fuzzingclient index.json.

Fails (exit 1) when any case's behaviour is not OK, NON-STRICT or
INFORMATIONAL, when its close behaviour is not OK or INFORMATIONAL, or when
a case differs from the committed expectation (so a regression from OK to
NON-STRICT is seen too). `--update` rewrites the expectation file.
"""
import json
import sys
from collections import Counter

ALLOWED = {"OK", "NON-STRICT", "INFORMATIONAL"}
ALLOWED_CLOSE = {"OK", "INFORMATIONAL"}


def case_key(case):
    return [int(p) for p in case.split(".")]


def main():
    index_path, expected_path = sys.argv[1], sys.argv[2]
    with open(index_path) as f:
        index = json.load(f)
    results = {}
    for agent_cases in index.values():
        for case, r in agent_cases.items():
            results[case] = {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"]}
    if "--update" in sys.argv:
        ordered = {c: results[c] for c in sorted(results, key=case_key)}
        with open(expected_path, "w") as f:
            json.dump(ordered, f, indent=1)
            f.write("\n")
    with open(expected_path) as f:
        expected = json.load(f)

    failures = []
    for case in sorted(results, key=case_key):
        r = results[case]
        if r["behavior"] not in ALLOWED or r["behaviorClose"] not in ALLOWED_CLOSE:
            failures.append(f"{case}: {r['behavior']} (close {r['behaviorClose']})")
        elif expected.get(case) != r:
            failures.append(f"{case}: {r} differs from expected {expected.get(case)}")
    for case in expected:
        if case not in results:
            failures.append(f"{case}: expected but not run")
    counts = Counter(r["behavior"] for r in results.values())
    summary = ", ".join(f"{n} {b}" for b, n in sorted(counts.items()))
    print(f"autobahn: {len(results)} cases: {summary}")
    for line in failures:
        print(f"autobahn: FAIL {line}")
    print(f"autobahn: {len(results) - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
