"""Running jobs and summarising them: child processes, interleaved rounds, medians, ratios.

Every figure is the median of `runs` measurements taken after `warmup` unrecorded rounds.
Jobs compared with each other run interleaved (round 1: ours, floor, seed; round 2: …),
so a burst of load from other processes on the machine hits all of them alike; a ratio
is the ratio of the medians, and its range the lowest and highest per-round ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CHILD = BENCH / "child.py"


def clean_env() -> dict[str, str]:
    """The environment for children: no settings of the developer's own leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTFOLIO_SYNC_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def run_child(task: Mapping[str, Any], *, cwd: Path, timeout: float = 1800) -> dict[str, Any]:
    """One job in a fresh interpreter (see child.py); returns its JSON result."""
    proc = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(dict(task))],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"bench job {task.get('kind')} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_command(argv: list[str], *, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Time an outside command (rclone) from here, start-up included; output discarded."""
    started = time.perf_counter()
    proc = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-2000:]!r}")
    return {"seconds": seconds}


@dataclass(slots=True)
class Series:
    """The recorded results of one job over the rounds."""

    name: str
    results: list[dict[str, Any]] = field(default_factory=list)

    def values(self, metric: str = "seconds") -> list[float]:
        return [float(r[metric]) for r in self.results]

    def stat(self, metric: str = "seconds") -> Stat:
        return Stat.of(self.values(metric))


@dataclass(frozen=True, slots=True)
class Stat:
    median: float
    low: float
    high: float
    n: int
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values), tuple(values))

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "n": self.n,
            "values": list(self.values),
        }


def ratio(top: Series, bottom: Series, metric: str = "seconds") -> Stat:
    """Median of `top` over median of `bottom`; min/max over the per-round ratios."""
    tops, bottoms = top.values(metric), bottom.values(metric)
    per_round = [t / b for t, b in zip(tops, bottoms, strict=True)]
    return Stat(
        statistics.median(tops) / statistics.median(bottoms),
        min(per_round),
        max(per_round),
        len(per_round),
        tuple(per_round),
    )


Job = Callable[[], dict[str, Any]]


def rounds(
    jobs: Mapping[str, Job],
    *,
    runs: int,
    warmup: int = 1,
    before: Mapping[str, Callable[[], None]] | None = None,
    after: Mapping[str, Callable[[dict[str, Any]], None]] | None = None,
    label: str = "",
) -> dict[str, Series]:
    """Run every job once per round, `warmup` + `runs` rounds; record the last `runs`.

    `before[name]` runs outside the timing before each run of that job (e.g. put the table
    back in its state), `after[name]` gets each result (e.g. to count written rows).
    """
    series = {name: Series(name) for name in jobs}
    for index in range(warmup + runs):
        recorded = index >= warmup
        for name, job in jobs.items():
            if before and name in before:
                before[name]()
            result = job()
            if after and name in after:
                after[name](result)
            if recorded:
                series[name].results.append(result)
            tag = "run" if recorded else "warm-up"
            print(
                f"    {label} {name:8s} {tag} {index - warmup + 1 if recorded else index + 1}: "
                f"{result.get('seconds', 0):.3f} s",
                flush=True,
            )
    return series
