# ruff: noqa: RUF001
"""Writing the results: latest.md (the table), latest.json (everything), scaling.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from context import Context, Row
from measure import Stat

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def shown(row: Row) -> str:
    value = row.value
    unit = f" {row.unit}" if row.unit and row.unit != "×" else ("×" if row.unit == "×" else "")
    if isinstance(value, Stat):
        if value.n == 1 or value.low == value.high:
            return f"{_fmt(value.median)}{unit}"
        return f"{_fmt(value.median)}{unit} ({_fmt(value.low)}–{_fmt(value.high)})"
    if isinstance(value, float):
        return f"{_fmt(value)}{unit}"
    return f"{value}{unit}"


def verdict(row: Row) -> str:
    if row.ok is None:
        return ""
    return "✅" if row.ok else "❌"


def markdown(ctx: Context, meta: dict[str, Any]) -> str:
    targets = [r for r in ctx.rows if r.target]
    details = [r for r in ctx.rows if not r.target]
    lines = [
        "# portfolio-sync benchmark results",
        "",
        f"`{meta['command']}` — {meta['date']}, scale `{ctx.scale}`, "
        f"{meta['machine']}. Each figure: median of {ctx.fast_runs} runs (full passes) or "
        f"{ctx.runs} runs (import, S3, events, burst) after {ctx.warmup} warm-up round(s), "
        "(min–max); ratios are medians over medians measured in the same interleaved rounds, "
        "their range the per-round ratios.",
        "",
        "## Targets",
        "",
        "| scenario | setup | figure | measured (min–max) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in targets:
        note = f" — {row.note}" if row.note else ""
        lines.append(
            f"| {row.scenario} | {row.setup} | {row.figure} | {shown(row)}{note} "
            f"| {row.target} | {verdict(row)} |"
        )
    lines += [
        "",
        "## Raw timings and other figures",
        "",
        "| scenario | setup | figure | measured (min–max) |",
        "|---|---|---|---|",
    ]
    for row in details:
        note = f" — {row.note}" if row.note else ""
        lines.append(f"| {row.scenario} | {row.setup} | {row.figure} | {shown(row)}{note} |")
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in meta["notes"]]
    lines += ["", "![scaling](scaling.png)", ""]
    return "\n".join(lines)


def chart(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = {"ours": ("tab:blue", "o"), "floor": ("tab:green", "s"), "seed": ("tab:red", "^")}
    labels = {
        "ours": "portfolio-sync full pass (no-op)",
        "floor": "floor: scandir+stat listing + SELECT",
        "seed": "seed: list each folder, compare",
    }
    for name, (color, marker) in styles.items():
        xs = [p["portfolios"] for p in points if name in p]
        if not xs:
            continue
        mid = [p[name]["median"] * 1e6 for p in points if name in p]
        low = [p[name]["min"] * 1e6 for p in points if name in p]
        high = [p[name]["max"] * 1e6 for p in points if name in p]
        ax.plot(xs, mid, marker=marker, color=color, label=labels[name])
        ax.fill_between(xs, low, high, color=color, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("portfolios (10 images each)")
    ax.set_ylabel("time per portfolio (µs), median and min–max")
    ax.set_ylim(bottom=0)
    ax.set_title("No-op full pass, SQLite + local folder")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def readme_section(ctx: Context, meta: dict[str, Any]) -> str:
    """The README's "Performance" section: how to reproduce, the targets table, the chart."""
    repo = Path(__file__).resolve().parents[1]
    where = RESULTS.relative_to(repo) if RESULTS.is_relative_to(repo) else RESULTS
    lines = [
        "## Performance",
        "",
        f"Reproduce with `{meta['command']}` (about {max(1, round(meta['elapsed_s'] / 60))} "
        "minutes on 2 cores; `make bench SCALE=large` adds the 100k-portfolio pass and 30 s "
        f"event runs). Full results: [`{where}/latest.md`]({where}/latest.md); method and "
        "data: [`bench/README.md`](bench/README.md).",
        "",
        "Every figure is measured against references run in the same rounds: the **floor** "
        "(one `os.scandir` + `stat` listing of the tree plus one `SELECT id, images`: the "
        "least work any full pass must do), the **seed** (the replaced cron: one listing "
        "and one UPDATE per portfolio) and `rclone lsjson -R`. Medians of "
        f"{ctx.fast_runs} (full passes) or {ctx.runs} runs after a warm-up, with min–max; "
        f"{meta['machine']} (a shared machine: other test suites ran meanwhile).",
        "",
        "| scenario | setup | figure | measured (min–max) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in ctx.rows:
        if row.target:
            note = f" — {row.note}" if row.note else ""
            lines.append(
                f"| {row.scenario} | {row.setup} | {row.figure} | {shown(row)}{note} "
                f"| {row.target} | {verdict(row)} |"
            )
    missed = [r for r in ctx.rows if r.ok is False]
    lines += [
        "",
        "A full pass over local folders lists them in a helper process while the main "
        "process compares, so it needs a second core to stay close to the floor: its total "
        "CPU time is about twice the floor's (*CPU time ÷ floor* in the full results), and "
        "on a machine whose cores are busy the wall-clock ratios rise towards that.",
    ]
    if missed:
        lines += [
            "",
            "Not met in this run: "
            + "; ".join(f"{r.scenario} ({r.setup}): {r.figure} {shown(r)}" for r in missed)
            + ". What the remaining time consists of: "
            "[`bench/results/profile.txt`](bench/results/profile.txt).",
        ]
    lines += [
        "",
        f"![No-op full pass: time per portfolio]({where}/scaling.png)",
        "",
    ]
    return "\n".join(lines)


def write(ctx: Context, meta: dict[str, Any], points: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(exist_ok=True)
    chart(points, RESULTS / "scaling.png")
    (RESULTS / "latest.md").write_text(markdown(ctx, meta))
    (RESULTS / "README-section.md").write_text(readme_section(ctx, meta))
    data = {
        "meta": meta,
        "rows": [r.as_dict() for r in ctx.rows],
        "scaling": points,
        "raw": ctx.raw,
    }
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
