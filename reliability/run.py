"""The scripted reliability and security checks behind RELIABILITY.md (`make reliability`):
the security suite, a long schemathesis run and the bad-data run, on real processes and
tiny models. Each test writes what it measured to artifacts/reliability/<check>.json;
this script runs them, then prints those figures as the table RELIABILITY.md quotes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ["tests/test_security.py", "tests/test_fuzz.py",
          "tests/test_data_assets.py::test_each_bad_data_class_is_quarantined_before_training_and_nothing_is_lost",
          "tests/test_data_assets.py::test_bad_rows_are_quarantined_with_reasons",
          "tests/test_data_assets.py::test_too_many_bad_rows_fail_the_run_and_keep_the_last_good_version",
          "tests/test_evaluation_assets.py::test_bad_data_never_reaches_training_and_the_champion_is_unchanged"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fuzz-examples", type=int, default=200, help="schemathesis examples per operation and mode")
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "reliability"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DRIFTLOOP_FUZZ_EXAMPLES": str(args.fuzz_examples), "DRIFTLOOP_RELIABILITY_REPORT": str(out)}
    started = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHECKS], cwd=ROOT, env=env)
    elapsed = time.perf_counter() - started
    figures = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "summary"}
    summary = {"pytest_exit_code": code, "seconds": round(elapsed, 1), "fuzz_examples": args.fuzz_examples, **figures}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=2, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
