"""Run the real `portfolio-sync` console script in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).with_name("portfolio-sync")


def run(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(*args: str, env: dict[str, str], expect: int = 0, cwd: Path | None = None) -> Any:
    proc = run(*args, "--json", env=env, cwd=cwd)
    assert proc.returncode == expect, proc.stderr + proc.stdout
    return json.loads(proc.stdout)
