"""`LocalStorage.iter_folders` through the helper process equals the in-process listing.

Large trees are listed by `folder_walker.py` in a helper process (from
`storage.HELPER_MIN_FOLDERS` folders on); here the threshold is lowered so a small tree
with every awkward case goes through both paths and must come out identical.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from portfolio_sync.backends import storage
from portfolio_sync.backends.storage import FolderFault, LocalStorage, folder_order
from portfolio_sync.errors import StorageError


def _tree(root: Path) -> None:
    def put(rel: str | bytes, data: bytes = b"x" * 10) -> None:
        path = os.path.join(os.fsencode(root), os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)

    put("1/a.jpg")
    put("1/sub/deeper/b.png")
    put("1/empty.jpg", b"")
    put("10/c.jpg")
    put("2/d.jpg")
    put("a b/e.jpg")
    put("a/f.jpg")
    put("caf\u00e9/nfc.jpg")
    put("cafe\u0301/nfd.jpg")
    put("new\nline/g.jpg")
    put(b"bad\xffname/h.jpg")  # not UTF-8: a surrogate-escaped str in Python
    put("top-level.jpg")  # a file directly in the root is not a folder
    os.makedirs(root / "empty-folder")
    os.makedirs(root / ".hidden")
    put(".hidden/i.jpg")
    os.symlink(root / "1" / "a.jpg", root / "2" / "link.jpg")
    os.symlink(root / "missing.jpg", root / "2" / "broken.jpg")
    os.mkfifo(root / "2" / "fifo.jpg")


def _listing(store: LocalStorage, prefix: str = "") -> list[tuple[str, object]]:
    """(name, sorted (path, size) pairs), or (name, the fault's message)."""
    return [
        (
            name,
            str(objects)
            if isinstance(objects, FolderFault)
            else sorted((o.path, o.size) for o in objects),
        )
        for name, objects in store.iter_folders(prefix)
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and byte names are POSIX")
def test_the_helper_lists_exactly_what_the_process_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    store = LocalStorage(tmp_path)
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 10**9)
    inline = _listing(store)
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 1)
    monkeypatch.setattr(storage, "_cores", lambda: 2)
    helped = _listing(store)
    assert helped == inline
    names = [name for name, _ in inline]
    assert names == sorted(names, key=folder_order) and "a b" in names and "empty-folder" in names
    assert not any("bad" in name for name in names)  # not UTF-8: skipped, with a warning
    assert store.skipped_names == 2  # once per listing
    faults = {name: found for name, found in inline if isinstance(found, str)}
    assert faults == {"top-level.jpg": f"{tmp_path / 'top-level.jpg'} is not a folder"}
    # mtimes come through unchanged too
    one = dict(store.iter_folders(""))["1"]
    assert not isinstance(one, FolderFault)
    assert {o.path: o.mtime for o in one} == {
        o.path: os.stat(tmp_path / o.path).st_mtime for o in one
    }


def test_the_helper_lists_under_a_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("1", "2", "3"):
        (tmp_path / "portfolios" / key).mkdir(parents=True)
        (tmp_path / "portfolios" / key / "a.jpg").write_bytes(b"x")
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 1)
    monkeypatch.setattr(storage, "_cores", lambda: 2)
    assert _listing(LocalStorage(tmp_path), "portfolios/") == [
        (key, [(f"portfolios/{key}/a.jpg", 1)]) for key in ("1", "2", "3")
    ]
    assert _listing(LocalStorage(tmp_path), "missing/") == []


def test_stopping_early_ends_the_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in range(50):
        (tmp_path / str(key)).mkdir()
        (tmp_path / str(key) / "a.jpg").write_bytes(b"x")
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 1)
    monkeypatch.setattr(storage, "_cores", lambda: 2)
    folders = LocalStorage(tmp_path).iter_folders("")
    assert next(folders)[0] == "0"
    folders.close()  # kills and reaps the helper: no ResourceWarning (warnings are errors)


def test_a_helper_that_dies_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in range(3):
        (tmp_path / str(key)).mkdir()
    broken = tmp_path / "walker.py"
    broken.write_text("import sys\nsys.exit(3)\n")
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 1)
    monkeypatch.setattr(storage, "_cores", lambda: 2)
    monkeypatch.setattr(storage, "_WALKER", str(broken))
    with pytest.raises(StorageError, match="helper"):
        list(LocalStorage(tmp_path).iter_folders(""))


def test_a_folder_that_cannot_be_listed_is_that_folders_fault_in_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in range(3):
        (tmp_path / str(key)).mkdir()
        (tmp_path / str(key) / "a.jpg").write_bytes(b"x")
    (tmp_path / "1" / "loop").symlink_to(tmp_path / "1" / "loop")  # ELOOP on stat
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 10**9)
    inline = _listing(LocalStorage(tmp_path))
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 1)
    monkeypatch.setattr(storage, "_cores", lambda: 2)
    helped = _listing(LocalStorage(tmp_path))
    assert helped == inline
    assert inline[0] == ("0", [("0/a.jpg", 1)]) and inline[2] == ("2", [("2/a.jpg", 1)])
    assert "cannot list" in str(inline[1][1]) and "symbolic links" in str(inline[1][1])


@pytest.mark.skipif(sys.platform == "win32", reason="byte names are POSIX")
def test_names_that_are_not_utf8_are_remembered_per_portfolio_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For the console's portfolio page: each listing of a portfolio folder (in process,
    by the helper, or of the one folder) leaves what it skipped, and forgets it when the
    next listing finds none; only the last `SKIPPED_FOLDERS` folders are kept."""

    def put(rel: bytes) -> None:
        path = os.path.join(os.fsencode(tmp_path), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()

    for rel in (b"1/a.jpg", b"2/bad\xff.jpg", b"2/ok.jpg", b"3/c.jpg"):
        put(rel)
    expected = {"2/": ["2/bad\\xff.jpg"]}
    inline = LocalStorage(tmp_path)
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 10**9)
    list(inline.iter_folders(""))
    monkeypatch.setattr(storage, "HELPER_MIN_FOLDERS", 1)
    monkeypatch.setattr(storage, "_cores", lambda: 2)
    helped = LocalStorage(tmp_path)
    list(helped.iter_folders(""))
    one = LocalStorage(tmp_path)
    assert [o.path for o in one.list_prefix("2/")] == ["2/ok.jpg"]
    assert inline.skipped_in == helped.skipped_in == one.skipped_in == expected
    os.remove(os.path.join(os.fsencode(tmp_path), b"2/bad\xff.jpg"))
    one.list_prefix("2/")
    assert one.skipped_in == {}
    monkeypatch.setattr(storage, "SKIPPED_FOLDERS", 2)
    for key in (b"4", b"5", b"6"):
        put(key + b"/\xfe.jpg")
        one.list_prefix(key.decode() + "/")
    assert one.skipped_in == {"5/": ["5/\\xfe.jpg"], "6/": ["6/\\xfe.jpg"]}
