"""The plots of a simulation report: PNG files drawn with matplotlib.

matplotlib belongs to the ``simulations`` extra (``pip install -e '.[simulations]'``) and
is imported only when a plot is drawn, so the agent never needs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REQUIRED = ("title", "curve", "nodes", "links", "hub")


def write_plots(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Draw convergence.png, bytes_per_node.png and topology.png from a report's JSON.

    ``RuntimeError`` if matplotlib is missing; ``ValueError`` naming the first key the
    report lacks.
    """
    missing = [key for key in REQUIRED if key not in report]
    if missing:
        raise ValueError(f"the report lacks {missing[0]!r}; cannot plot it")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as exc:
        raise RuntimeError(
            f"matplotlib is not installed ({exc}); pip install -e '.[simulations]'"
        ) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, draw in (
        ("convergence.png", _convergence),
        ("bytes_per_node.png", _bytes_per_node),
        ("topology.png", _topology),
    ):
        figure, axes = pyplot.subplots(figsize=(7, 4.5) if name != "topology.png" else (6, 6))
        try:
            draw(axes, report)
            axes.set_title(f"{report['title']}", fontsize=9)
            figure.tight_layout()
            figure.savefig(out_dir / name, dpi=110)
        finally:
            pyplot.close(figure)
        drawn.append(out_dir / name)
    return drawn


def _convergence(axes: Any, report: Mapping[str, Any]) -> None:
    curve = report["curve"]
    times = [point[0] for point in curve]
    shares = [100 * point[1] for point in curve]
    axes.step([1000 * t for t in times], shares, where="post", color="tab:blue")
    axes.set_xlabel("virtual ms since the write")
    axes.set_ylabel("% of (change, node) pairs held")
    axes.set_ylim(0, 101)
    axes.grid(alpha=0.3)


def _bytes_per_node(axes: Any, report: Mapping[str, Any]) -> None:
    nodes = sorted(report["nodes"], key=lambda n: n["bytes_sent"], reverse=True)
    colors = ["tab:red" if n["name"] == report["hub"] else "tab:blue" for n in nodes]
    axes.bar(range(len(nodes)), [n["bytes_sent"] / 1000 for n in nodes], color=colors, width=1.0)
    axes.set_xlabel("nodes, most bytes first" + (" (red: the hub)" if report["hub"] else ""))
    axes.set_ylabel("kB sent")
    axes.grid(axis="y", alpha=0.3)


def _topology(axes: Any, report: Mapping[str, Any]) -> None:
    """The links at the end, nodes on a circle (down nodes hollow, the hub in red)."""
    names = [n["name"] for n in report["nodes"]]
    up = {n["name"]: n["up"] for n in report["nodes"]}
    place = {
        name: (math.cos(2 * math.pi * i / len(names)), math.sin(2 * math.pi * i / len(names)))
        for i, name in enumerate(names)
    }
    for a, b in report["links"]:
        (xa, ya), (xb, yb) = place[a], place[b]
        axes.plot([xa, xb], [ya, yb], color="0.6", linewidth=0.5, zorder=1)
    for name in names:
        x, y = place[name]
        color = "tab:red" if name == report["hub"] else "tab:blue"
        axes.scatter(
            [x], [y], s=18, zorder=2, edgecolors=color, facecolors=color if up[name] else "white"
        )
    axes.set_aspect("equal")
    axes.axis("off")
