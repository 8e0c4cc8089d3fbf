"""The package as users get it: `python -m build` makes the sdist and the wheel, the wheel
goes into a clean venv outside the repository with `pip install -c constraints.lock`, and
the installed `portfolio-sync` runs from there. Nothing of the source tree is on that
path, so a file the wheel lacks (a template, a static asset) fails here, not in production.

One build and one install serve the whole module; each test then runs the installed command.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.acceptance.serve_process import serve_process

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dist:
    wheel: Path
    sdist: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Installed:
    python: Path
    script: Path
    env: dict[str, str]


def _run(
    cmd: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _tracked_package_files() -> set[str]:
    """Every file git tracks under src/portfolio_sync, as a path inside the wheel."""
    out = _run(["git", "ls-files", "-z", "src/portfolio_sync"], cwd=ROOT, timeout=30).stdout
    files = {name.removeprefix("src/") for name in out.split("\0") if name}
    assert any(name.startswith("portfolio_sync/web/templates/") for name in files)
    return files


def _clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment minus anything that points back at the repository's venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        and not k.startswith("PORTFOLIO_SYNC_")
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    # Isolated build environments, made by uv: pip took minutes here for the same result.
    build = [sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(out), str(ROOT)]
    _run(build, timeout=240)
    (wheel,) = out.glob("portfolio_sync-*.whl")
    (sdist,) = out.glob("portfolio_sync-*.tar.gz")
    return Dist(wheel=wheel, sdist=sdist)


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The wheel in a fresh venv of the base interpreter, at the locked versions. uv makes
    and fills it, compiling bytecode as pip does; the result is what `pip install -c
    constraints.lock` installs."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    env = _clean_env()
    base_python = str(Path(sys.base_prefix) / "bin" / "python3")
    uv = [sys.executable, "-m", "uv", "--quiet"]
    _run([*uv, "venv", "--python", base_python, str(venv)], timeout=120, env=env)
    python = venv / "bin" / "python"
    lock = str(ROOT / "constraints.lock")
    install = [*uv, "pip", "install", "--compile-bytecode", "--python", str(python), "-c", lock]
    _run([*install, str(dist.wheel)], timeout=240, env=env)
    run_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    yield Installed(python=python, script=venv / "bin" / "portfolio-sync", env=run_env)
    shutil.rmtree(venv, ignore_errors=True)


def test_wheel_and_sdist_hold_every_tracked_package_file(dist: Dist) -> None:
    """Templates, static assets and py.typed travel with the code, whatever gets added."""
    tracked = _tracked_package_files()
    in_wheel = set(zipfile.ZipFile(dist.wheel).namelist())
    assert not tracked - in_wheel, f"missing from the wheel: {sorted(tracked - in_wheel)}"
    with tarfile.open(dist.sdist) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        in_sdist = {name.removeprefix(f"{top}/src/") for name in sdist.getnames()}
        assert {f"{top}/pyproject.toml", f"{top}/README.md"} <= set(sdist.getnames())
    assert not tracked - in_sdist, f"missing from the sdist: {sorted(tracked - in_sdist)}"


def test_installed_wheel_runs_help_demo_and_a_sync(installed: Installed, tmp_path: Path) -> None:
    where = _run(
        [str(installed.python), "-c", "import portfolio_sync; print(portfolio_sync.__file__)"],
        cwd=tmp_path,
        env=installed.env,
        timeout=60,
    ).stdout
    assert where.startswith(str(installed.python.parent.parent)), where  # the venv, not src/

    def cli(*args: str, cwd: Path = tmp_path) -> str:
        cmd = [str(installed.script), *args]
        return _run(cmd, cwd=cwd, env=installed.env, timeout=120).stdout

    assert "serve" in cli("--help")
    cli("demo", "--dir", "demo", "--portfolios", "4")
    demo = tmp_path / "demo"
    shutil.copy(demo / "storage" / "1" / "photo-1.jpg", demo / "storage" / "3" / "extra.jpg")
    cli("sync", "3", cwd=demo)
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        (images,) = db.execute("SELECT images FROM portfolios WHERE id = 3").fetchone()
    assert "3/extra.jpg" in images


def test_installed_wheel_serves_the_dashboard_and_its_assets(
    installed: Installed, tmp_path: Path
) -> None:
    _run(
        [str(installed.script), "demo", "--dir", "demo", "--portfolios", "3"],
        cwd=tmp_path,
        env=installed.env,
        timeout=120,
    )
    with serve_process(installed.env, tmp_path / "demo", script=installed.script) as server:
        page = server.client.get("/")
        assert page.status_code == 200, page.text
        assert "/files/1/" in page.text  # thumbnails of the demo's rows
        # Every local link of the page (stylesheets, scripts, thumbnails, pages) is served
        # from the installed wheel.
        assets = set(re.findall(r'(?:src|href)="(/[^"#?]*)', page.text))
        for path in sorted(assets):
            answer = server.client.get(path)
            assert answer.status_code == 200 and answer.content, path
