"""Helper process of `LocalStorage.iter_folders` for large trees: lists folders ahead.

A bulk pass over a local tree spends most of its time in `stat` calls, and the rest in
Python work per image (filtering, natural sort, comparing). In one process the two add up;
here the listing runs in this helper while the pass compares, so on two or more cores the
pass costs about as much as the listing alone. Threads cannot do this: the listing takes
and drops the GIL around every `stat`, and a busy comparing thread would hold it.

Run as a script (stdlib only, so `python -I -S` starts it in milliseconds):
`python -I -S folder_walker.py TOP PREFIX DEPTH` (DEPTH -1: any depth). It lists and sorts
the folder names of TOP itself, so the calling process never holds the names of a large
tree (the one part of a pass whose memory grows with the number of folders), then writes
frames to stdout: one type byte, a 4-byte little-endian length, a marshal'ed payload:

- `F`: a batch of folders, each `(name, paths, sizes, mtimes, error, skipped)`, paths
  relative to the root; `error` is None or why that one folder could not be listed,
  `skipped` the escaped names that were not valid UTF-8;
- `E`: the error that stopped the listing (a string; nothing after it is valid);
- `Z`: the end.

The listing rules live here once, for this script and for `storage.LocalStorage` alike
(which imports this module): regular files (symlinks followed), down to `depth` levels of
sub-folders (None: any depth; 0: the folder's own files only, so a sub-folder is never
read when nothing below it could count); entries that vanish meanwhile are skipped, and a
portfolio folder that does not exist is empty. Whatever else is wrong with one portfolio
folder (a file or a dangling link in its place, unreadable, a symlink loop) is an error of
that folder (`WalkError`), reported with its name; the listing of the others goes on.
Names that are not valid UTF-8 are skipped and returned, escaped, so the caller can warn.
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


def escaped(name: str) -> str:
    """A name read with surrogateescape, printable: undecodable bytes as `\\xff`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _valid(name: str) -> bool:
    """Whether `name` came from valid UTF-8 bytes (os.scandir escapes the others)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def folder_names(top: str, skipped: list[str] | None = None) -> list[str]:
    """The entries of `top` that may be portfolio folders, in `folder_order`.

    Every entry but hidden ones, not only folders: a file or a dangling link where a
    portfolio folder should be must be that portfolio's error (`list_folder` says which),
    never read as an empty folder. None if `top` does not exist. Names that are not valid
    UTF-8 are left out (and appended, escaped, to `skipped`).
    """
    try:
        with os.scandir(top) as entries:
            names = []
            for entry in entries:
                name = entry.name
                if not _valid(name):
                    if skipped is not None:
                        skipped.append(escaped(name))
                elif name[0] != ".":
                    names.append(name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise WalkError(f"cannot list {top}: {exc.strerror or exc}") from exc
    names.sort(key=folder_order)
    return names


def list_folder(
    directory: str,
    rel: str,
    depth: int | None,
    paths: list[str],
    sizes: list[int],
    mtimes: list[float],
    skipped: list[str],
) -> None:
    """Append path (`rel` + name), size and mtime of the files of one portfolio folder.

    A folder that does not exist adds nothing; one that cannot be listed raises
    WalkError naming it (a file or a dangling link in its place, no permission, a loop).
    """
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        if os.path.lexists(directory):
            raise WalkError(f"{directory} is a dangling symbolic link, not a folder") from None
        return
    except NotADirectoryError:
        raise WalkError(f"{directory} is not a folder") from None
    except OSError as exc:
        raise WalkError(f"cannot list {directory}: {exc.strerror or exc}") from exc
    with entries:
        _walk(entries, directory, rel, depth, paths, sizes, mtimes, skipped, ())


def _walk(
    entries: Any,
    directory: str,
    rel: str,
    depth: int | None,
    paths: list[str],
    sizes: list[int],
    mtimes: list[float],
    skipped: list[str],
    ancestors: tuple[tuple[int, int], ...],
) -> None:
    try:
        for entry in entries:
            name = entry.name
            if not _valid(name):
                skipped.append(rel + escaped(name))
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:  # vanished meanwhile, or a dangling link to a file
                continue
            mode = st.st_mode
            if stat.S_ISREG(mode):
                paths.append(rel + name)
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime)
            elif stat.S_ISDIR(mode) and (depth is None or depth > 0):
                here = ancestors or (_identity(os.stat(directory)),)
                if _identity(st) in here:
                    raise WalkError(f"{entry.path} is a symbolic link loop")
                try:
                    inner = os.scandir(entry.path)
                except (FileNotFoundError, NotADirectoryError):  # vanished meanwhile
                    continue
                with inner:
                    _walk(
                        inner,
                        entry.path,
                        f"{rel}{name}/",
                        None if depth is None else depth - 1,
                        paths,
                        sizes,
                        mtimes,
                        skipped,
                        (*here, _identity(st)),
                    )
    except WalkError:
        raise
    except OSError as exc:
        raise WalkError(f"cannot list {directory}: {exc.strerror or exc}") from exc


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def emit(out: BinaryIO, kind: bytes, payload: Any) -> None:
    data = marshal.dumps(payload)
    out.write(kind + len(data).to_bytes(4, "little") + data)
    out.flush()


Frame = tuple[str, list[str], list[int], list[float], str | None, list[str]]


def main() -> int:
    top, prefix, depth_arg = sys.argv[1], sys.argv[2], int(sys.argv[3])
    depth = None if depth_arg < 0 else depth_arg
    out = sys.stdout.buffer
    batch: list[Frame] = []
    size = 0
    try:
        skipped_top: list[str] = []
        names = folder_names(top, skipped_top)
    except WalkError as exc:
        emit(out, b"E", str(exc))
        return 0
    if skipped_top:
        batch.append(("", [], [], [], None, skipped_top))
    for name in names:
        paths: list[str] = []
        sizes: list[int] = []
        mtimes: list[float] = []
        skipped: list[str] = []
        error = None
        try:
            list_folder(
                os.path.join(top, name), f"{prefix}{name}/", depth, paths, sizes, mtimes, skipped
            )
        except WalkError as exc:
            error = str(exc)
        batch.append((name, paths, sizes, mtimes, error, skipped))
        size += len(paths) + 1
        if size >= BATCH_OBJECTS:
            emit(out, b"F", batch)
            batch, size = [], 0
    if batch:
        emit(out, b"F", batch)
    emit(out, b"Z", None)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the pass stopped reading: nothing more to say
        sys.exit(0)
