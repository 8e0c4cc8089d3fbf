"""Helper process of `LocalStorage.iter_folders` for large trees: lists folders ahead.

A bulk pass over a local tree spends most of its time in `stat` calls, and the rest in
Python work per image (filtering, natural sort, comparing). In one process the two add up;
here the listing runs in this helper while the pass compares, so on two or more cores the
pass costs about as much as the listing alone. Threads cannot do this: the listing takes
and drops the GIL around every `stat`, and a busy comparing thread would hold it.

Run as a script (stdlib only, so `python -I -S` starts it in milliseconds):
`python -I -S folder_walker.py TOP PREFIX`. It lists and sorts the folder names of TOP
itself, so the calling process never holds the names of a large tree (the one part of a
pass whose memory grows with the number of folders), then writes frames to stdout: one
type byte, a 4-byte little-endian length, a marshal'ed payload:

- `F`: a batch of folders, each `(name, paths, sizes, mtimes)`, paths relative to the root;
- `E`: the error that stopped the listing (a string; nothing after it is valid);
- `Z`: the end.

The listing rules live here once, for this script and for `storage.LocalStorage` alike
(which imports this module): regular files at any depth (symlinks followed), entries that
vanish meanwhile are skipped, a folder that vanished is empty, any other error ends the
listing (`WalkError`, an `E` frame here).
"""

from __future__ import annotations

import marshal
import os
import stat
import sys
from typing import Any, BinaryIO

BATCH_OBJECTS = 1024  # objects per frame: enough to amortise a frame, small enough to stream


class WalkError(Exception):
    """Listing failed (not: something vanished meanwhile); the message names the folder."""


def folder_order(name: str) -> bytes:
    """The order S3 lists folders in: UTF-8 bytes of `name/`.

    The catalog reads rows in the same order so that the bulk pass can merge the two
    streams; `name/` rather than `name` matters (`a b/` sorts before `a/`).
    """
    return (name + "/").encode("utf-8", "surrogateescape")


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def folder_names(top: str) -> list[str]:
    """The sub-folders of `top` in `folder_order`; none if `top` does not exist."""
    try:
        with os.scandir(top) as entries:
            names = [entry.name for entry in entries if _is_dir(entry)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise WalkError(f"cannot list {top}: {exc}") from exc
    names.sort(key=folder_order)
    return names


def walk(directory: str, rel: str, paths: list[str], sizes: list[int], mtimes: list[float]) -> None:
    """Append path (`rel` + name), size and mtime of every file under `directory`."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                mode = st.st_mode
                if stat.S_ISREG(mode):
                    paths.append(rel + entry.name)
                    sizes.append(st.st_size)
                    mtimes.append(st.st_mtime)
                elif stat.S_ISDIR(mode):
                    walk(entry.path, f"{rel}{entry.name}/", paths, sizes, mtimes)
    except (FileNotFoundError, NotADirectoryError):
        return
    except WalkError:
        raise
    except OSError as exc:
        raise WalkError(f"cannot list {directory}: {exc}") from exc


def emit(out: BinaryIO, kind: bytes, payload: Any) -> None:
    data = marshal.dumps(payload)
    out.write(kind + len(data).to_bytes(4, "little") + data)
    out.flush()


def main() -> int:
    top, prefix = sys.argv[1], sys.argv[2]
    out = sys.stdout.buffer
    batch: list[tuple[str, list[str], list[int], list[float]]] = []
    size = 0
    try:
        for name in folder_names(top):
            paths: list[str] = []
            sizes: list[int] = []
            mtimes: list[float] = []
            walk(os.path.join(top, name), f"{prefix}{name}/", paths, sizes, mtimes)
            batch.append((name, paths, sizes, mtimes))
            size += len(paths) + 1
            if size >= BATCH_OBJECTS:
                emit(out, b"F", batch)
                batch, size = [], 0
    except WalkError as exc:
        emit(out, b"E", str(exc))
        return 0
    if batch:
        emit(out, b"F", batch)
    emit(out, b"Z", None)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the pass stopped reading: nothing more to say
        sys.exit(0)
