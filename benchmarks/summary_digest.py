"""The digest of a run's results: sha256 of its summary.json with the clock readings left out
(`wall_time_s`, which differ between any two runs). Two runs of the same code and seed under
`deterministic=true` on one machine give the same digest; a refactor that changes no number must
too (issue 20: the demo before and after the layout change).

    python benchmarks/summary_digest.py runs/demo [more run directories ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

CLOCK_KEYS = ("wall_time_s",)


def without_clock(obj):
    if isinstance(obj, dict):
        return {k: without_clock(v) for k, v in obj.items() if k not in CLOCK_KEYS}
    if isinstance(obj, list):
        return [without_clock(v) for v in obj]
    return obj


def digest(run_dir: Path) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    return hashlib.sha256(json.dumps(without_clock(summary), sort_keys=True).encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        if not (run / "summary.json").is_file():
            sys.exit(f"error: {run / 'summary.json'}: no such file (not a run directory, or not started)")
        print(f"{digest(run)}  {run}")


if __name__ == "__main__":
    main()
