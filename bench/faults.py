"""The fault suite's long versions: more kills, several seeds, a one-minute broker outage.

    python bench/faults.py [--kills 100] [--seeds 3] [--broker-outage-s 60] [--all]

CI runs tests/test_faults_*.py with small settings (18 kills, a 12 s broker
outage) to stay within its time. This runs the same tests with the long ones,
through their environment variables (EDGE_FAULT_KILLS, EDGE_FAULT_SEED,
EDGE_FAULT_BROKER_OUTAGE_S), one pytest process each, and prints how long each
took and whether it passed. ``--all`` also runs the other fault tests once
(upload server, disk, camera, clock), which have no long version.
Exit status 1 when any run failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run(label: str, test: str, env: dict[str, str]) -> bool:
    started_s = time.monotonic()
    result = subprocess.run(
        # No per-test timeout: these are long on purpose; each has its own budget.
        [sys.executable, "-m", "pytest", "-q", "-s", "-o", "timeout=0", test],
        cwd=REPO_ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed_s = time.monotonic() - started_s
    summary = [line for line in result.stdout.splitlines() if line.strip()][-1:]
    figures = [line for line in result.stdout.splitlines() if " kills " in line or "outage" in line]
    print(f"{label:<40} {elapsed_s:7.1f} s  {' '.join(summary)}", flush=True)
    for line in figures:
        print(f"    {line.strip().lstrip('.')}")
    if result.returncode != 0:
        print(result.stdout[-4000:])
        print(result.stderr[-2000:])
    return result.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3, help="kill runs, seeds 1..N")
    parser.add_argument("--broker-outage-s", type=float, default=60.0)
    parser.add_argument("--all", action="store_true", help="the other fault tests too")
    args = parser.parse_args()

    ok = True
    for seed in range(1, args.seeds + 1):
        ok &= run(
            f"kill -9 x{args.kills}, seed {seed}",
            "tests/test_faults_kill.py",
            {"EDGE_FAULT_KILLS": str(args.kills), "EDGE_FAULT_SEED": str(seed)},
        )
    ok &= run(
        f"broker stopped {args.broker_outage_s:g} s",
        "tests/test_faults_broker.py",
        {"EDGE_FAULT_BROKER_OUTAGE_S": str(args.broker_outage_s)},
    )
    if args.all:
        for name in ("upload", "disk", "camera", "clock"):
            ok &= run(name, f"tests/test_faults_{name}.py", {})
    print("faults: all passed" if ok else "faults: FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
