"""A fault in one local portfolio folder is that portfolio's error, never `[]` and never
the pass's: a file or a dangling link in place of the folder, a symbolic link loop, an
unreadable folder, names that are not valid UTF-8. On SQLite and PostgreSQL, with the full
pass listing in process and through the helper process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from portfolio_sync.backends import schema, storage
from tests.acceptance.command import SCRIPT
from tests.integration.world import World


@pytest.fixture(params=["in-process", "helper"])
def listing_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "helper":
        monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 1)
        monkeypatch.setattr(storage, "_cores", lambda: 2)
    else:
        monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 10**9)
    return str(request.param)


def _rows(world: World, count: int) -> Path:
    world.create_table()
    for key in range(1, count + 1):
        world.insert(key, [f"{key}/a.jpg"])
        world.put(f"{key}/a.jpg")
    assert world.root is not None
    return world.root


def test_a_file_or_a_dangling_link_in_place_of_a_folder_is_that_keys_error(
    local: World, listing_mode: str
) -> None:
    root = _rows(local, 8)
    shutil.rmtree(root / "2")
    (root / "2").write_bytes(b"not a folder")
    shutil.rmtree(root / "3")
    (root / "3").symlink_to(root / "gone")
    local.put("8/b.jpg")  # a real change elsewhere must still be written
    with local.service() as svc:
        report = svc.reconciler.sync_all("test")
        one = svc.reconciler.sync_one("3", "test")
        state = schema.read_state(svc.catalog.engine, "2")
    errors = {r.key: r.error or "" for r in report.errors}
    assert sorted(errors) == ["2", "3"] and report.faulted == ["2", "3"]
    assert "is not a folder" in errors["2"] and "dangling symbolic link" in errors["3"]
    assert report.aborted is None and [r.key for r in report.changed] == ["8"]
    assert one.status == "error" and "dangling" in (one.error or "")
    assert local.images(2) == ["2/a.jpg"] and local.images(3) == ["3/a.jpg"]
    assert local.written_keys() == ["8"]
    assert state is not None and "is not a folder" in state["last_error"]


def test_a_symlink_loop_is_that_keys_error_and_sub_folders_are_not_read_unless_recursive(
    local: World, listing_mode: str
) -> None:
    root = _rows(local, 6)
    (root / "4" / "sub").mkdir()
    (root / "4" / "sub" / "up").symlink_to(root / "4")  # 4/sub/up/sub/up/… for ever
    (root / "5" / "sub").mkdir()
    (root / "5" / "sub" / "self").symlink_to(root / "5" / "sub" / "self")  # ELOOP on stat
    local.put("6/b.jpg")
    with local.service() as svc:  # not recursive: 4/sub and 5/sub are never opened
        flat = svc.reconciler.sync_all("test")
    assert flat.ok and [r.key for r in flat.changed] == ["6"]
    with local.service(recursive=True) as svc:
        deep = svc.reconciler.sync_all("test")
    errors = {r.key: r.error or "" for r in deep.errors}
    assert sorted(errors) == ["4", "5"] and deep.aborted is None
    assert "symbolic link loop" in errors["4"]
    assert "cannot list" in errors["5"] and "symbolic links" in errors["5"]
    assert local.images(4) == ["4/a.jpg"] and local.images(5) == ["5/a.jpg"]
    assert local.written_keys() == ["6"]


def test_names_that_are_not_utf8_are_skipped_with_a_warning(
    local: World, listing_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = _rows(local, 3)
    with open(os.path.join(os.fsencode(root / "2"), b"bad\xff.jpg"), "wb") as handle:
        handle.write(b"x" * 10)
    os.mkdir(os.path.join(os.fsencode(root), b"folder\xfe"))
    local.put("2/b.jpg")
    caplog.set_level(logging.WARNING, logger="portfolio_sync.backends.storage")
    with local.service() as svc:
        report = svc.reconciler.sync_all("test")
        one = svc.reconciler.sync_one("2", "test")
        skipped = getattr(svc.storage, "skipped_names", None)
    assert report.ok and [r.key for r in report.changed] == ["2"]
    assert one.status == "unchanged" and local.images(2) == ["2/a.jpg", "2/b.jpg"]
    warned = [r for r in caplog.records if getattr(r, "action", "") == "names_skipped"]
    names = [name for r in warned for name in r.names]  # type: ignore[attr-defined]
    assert "2/bad\\xff.jpg" in names and "folder\\xfe" in names
    assert any(str(root / "2") in r.folder for r in warned)  # type: ignore[attr-defined]
    assert skipped == 3  # two listings of folder 2, one of the root


SYNC_ALL = ("sync", "--all", "--json")


def test_an_unreadable_folder_is_that_keys_error(tmp_path: Path) -> None:
    """The tests run as root, which reads a folder whatever its mode (CAP_DAC_OVERRIDE).
    So the real command runs here without the two capabilities that bypass permissions
    (util-linux `setpriv`), and meets a folder at mode 000 as any other user would."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "util-linux setpriv is needed to drop root's bypass"
    root = tmp_path / "storage"
    root.mkdir()
    world = World(kind="sqlite-folder", database_url=f"sqlite:///{tmp_path / 'app.db'}", root=root)
    _rows(world, 4)
    world.put("4/b.jpg")
    (root / "2").chmod(0)
    caps = "-dac_override,-dac_read_search"
    try:
        proc = subprocess.run(
            [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", str(SCRIPT), *SYNC_ALL],
            env=world.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        (root / "2").chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert [e["key"] for e in report["errors"]] == ["2"]
    assert "Permission denied" in report["errors"][0]["error"]
    assert report["aborted"] is None and [c["key"] for c in report["changed"]] == ["4"]
    assert world.images(2) == ["2/a.jpg"] and world.written_keys() == ["4"]
    world.close()


def test_full_pass_cli_exits_1_naming_the_faulted_keys(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    root.mkdir()
    world = World(kind="sqlite-folder", database_url=f"sqlite:///{tmp_path / 'app.db'}", root=root)
    _rows(world, 3)
    shutil.rmtree(root / "2")
    (root / "2").write_bytes(b"x")
    proc = subprocess.run(
        [str(SCRIPT), "sync", "--all"],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    said = " ".join(proc.stderr.split())  # rich wraps at the terminal's width
    assert "error 2:" in said and "is not a folder" in said
    assert world.images(2) == ["2/a.jpg"]
    world.close()
