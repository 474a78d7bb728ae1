"""Shared pieces of the benchmarks: figures, timing and output."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One measured number, with the baseline it is compared against in the same run."""

    suite: str
    name: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def machine() -> str:
    system = f"{platform.machine()} {platform.system()} {platform.release()}"
    return f"{system}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def print_table(figures: list[Figure]) -> None:
    print(f"# {machine()}")
    width = max(len(f.name) for f in figures)
    header = (
        f"{'figure':<{width}}  {'value':>12}  {'unit':<10}  {'baseline':>12}  {'ratio':>6}"
        "  target; baseline"
    )
    print(header)
    print("-" * len(header))
    for f in figures:
        base = "" if f.baseline_value is None else _fmt(f.baseline_value)
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        note = "; ".join(x for x in (f.target, f.baseline) if x)
        print(
            f"{f.name:<{width}}  {_fmt(f.value):>12}  {f.unit:<10}  {base:>12}  {ratio:>6}  {note}"
        )


def print_json(figures: list[Figure]) -> None:
    for f in figures:
        print(json.dumps({**asdict(f), "ratio": f.ratio, "machine": machine()}))


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"
