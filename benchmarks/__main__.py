"""Run blazemesh's benchmarks: ``python -m benchmarks [SUITE ...] [--json]``."""

from __future__ import annotations

import argparse
import importlib
import sys

from benchmarks.common import Figure, print_json, print_table

SUITES = ["replica", "secure", "sync", "lan", "sim", "memory"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help=f"any of {', '.join(SUITES)} (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    args = parser.parse_args()
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    figures: list[Figure] = []
    for name in args.suites or SUITES:
        module = importlib.import_module(f"benchmarks.{name}")
        for figure in module.run():
            figures.append(figure)
            print(f"  {figure.suite}: {figure.name} done", file=sys.stderr)
    if args.json:
        print_json(figures)
    else:
        print_table(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
