"""The environment the tests run in is the one constraints.lock describes, so a fresh machine
gets what was tested (an unpinned install once picked a typer/rich pair that broke --help)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9_.\-\[\]]+)==(?P<version>[^\s;]+)\s*(?:;\s*(?P<marker>.+))?$"
)


def _pins() -> dict[str, list[tuple[str, str | None]]]:
    pins: dict[str, list[tuple[str, str | None]]] = {}
    for line in (ROOT / "constraints.lock").read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            name = canonicalize_name(m["name"].split("[")[0])
            pins.setdefault(name, []).append((m["version"], m["marker"]))
    return pins


def _applies(marker: str | None) -> bool:
    return marker is None or Marker(marker).evaluate()


def test_every_declared_dependency_is_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    pins = _pins()
    missing = [r for r in declared if canonicalize_name(Requirement(r).name) not in pins]
    assert not missing, f"run `make lock`: not in constraints.lock: {missing}"


def test_installed_versions_are_the_locked_ones() -> None:
    mismatched = []
    for name, options in _pins().items():
        wanted = [version for version, marker in options if _applies(marker)]
        if not wanted:
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment does not install (bench)
        if installed not in wanted:
            mismatched.append(f"{name}: installed {installed}, locked {wanted}")
    assert not mismatched, "reinstall with `make install`: " + "; ".join(mismatched)
