# ruff: noqa: RUF002
"""Benchmark data: N portfolios × M images in a local folder, and the matching table.

The tree is written once; the table is then put in one of three states between runs
(outside any timing): `synced` (every row equals its folder: a no-op pass), `drifted`
(a chosen share of rows is stale) and `empty` (every images column NULL: an initial
import). Drift comes in the kinds the issue lists, spread evenly over the drifted keys:

- `missing`: a file the row lists was deleted from the folder,
- `extra`: a file was uploaded that the row does not list,
- `reordered`: the row lists the right files in the wrong order,
- `null`: the row's images column is NULL although the folder has images,

plus orphan folders (a folder with images and no row), which a pass reports and never
writes. Rows written by a pass are counted by an UPDATE trigger into `write_log`, never
taken from the program's own report.

Keys are integers 1..N (folder `"{key}/"`). Image names follow four styles, one per
portfolio in turn, so that the natural sort does real work: camera names (`IMG_4821.JPG`),
upload counters (`1.jpg` … `10.jpg`), content hashes (`3f2a9c1e4b5d.jpg`) and descriptive
names (`Kitchen view 7.jpg`). Expected values are ordered by `expected_order` below, an
implementation of the natural order written independently of the product's.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

JPEG = b"\xff\xd8\xff\xe0" + b"0" * 60  # small, non-empty: zero-byte objects are not images
KINDS = ("missing", "extra", "reordered", "null")
State = Literal["synced", "drifted", "empty"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    portfolios: int
    images: int = 10
    drift: float = 0.0  # share of rows that are stale in the `drifted` state
    orphans: float = 0.0  # orphan folders, as a share of `portfolios`
    seed: int = 5


@dataclass(slots=True, kw_only=True)
class Tree:
    """The folder tree and what each row should hold (the canonical values)."""

    spec: Spec
    root: Path
    drifted: dict[int, str] = field(default_factory=dict)  # key -> drift kind
    orphan_keys: list[int] = field(default_factory=list)
    files: int = 0

    @property
    def keys(self) -> range:
        return range(1, self.spec.portfolios + 1)

    def base_names(self, key: int) -> list[str]:
        """The folder's names before any drift, in natural order."""
        m = self.spec.images
        rng = random.Random(self.spec.seed * 1_000_003 + key)
        style = key % 4
        if style == 0:
            start = rng.randrange(1, 9000)
            names = [f"IMG_{start + j:04d}.JPG" for j in range(m)]
        elif style == 1:
            names = [f"{j}.jpg" for j in range(1, m + 1)]
        elif style == 2:
            names = [f"{rng.getrandbits(48):012x}.jpg" for _ in range(m)]
        else:
            names = [f"Kitchen view {j}.jpg" for j in range(1, m + 1)]
        return expected_order(names)

    def names(self, key: int) -> list[str]:
        """File names in the folder of `key` (drift included), in natural order."""
        names = self.base_names(key)
        kind = self.drifted.get(key)
        if kind == "missing":
            return names[:1] + names[2:]
        if kind == "extra":
            return expected_order([*names, "new upload.jpg"])
        return names

    def canonical(self, key: int) -> list[str]:
        """What a synced row holds."""
        return [f"{key}/{name}" for name in self.names(key)]

    def stale(self, key: int) -> list[str] | None:
        """What a drifted row holds (the value before the drift happened)."""
        kind = self.drifted[key]
        if kind == "null":
            return None
        if kind == "reordered":
            return list(reversed(self.canonical(key)))
        # missing: still lists the deleted file; extra: does not list the new one yet
        return [f"{key}/{name}" for name in self.base_names(key)]

    def value(self, key: int, state: State) -> list[str] | None:
        if state == "empty":
            return None
        if state == "drifted" and key in self.drifted:
            return self.stale(key)
        return self.canonical(key)


_RUNS = re.compile(r"([0-9]+)")


def expected_order(names: list[str]) -> list[str]:
    """Natural order as the product documents it: ASCII digit runs compare as numbers,
    text case-insensitively (casefold), the raw name breaks ties."""

    def key(name: str) -> tuple[list[tuple[str, int]], str]:
        parts = _RUNS.split(name)
        pairs = []
        for index in range(0, len(parts), 2):
            number = int(parts[index + 1]) if index + 1 < len(parts) else -1
            pairs.append((parts[index].casefold(), number))
        return pairs, name

    return sorted(names, key=key)


def plan_tree(spec: Spec, root: Path | None = None) -> Tree:
    """Which keys drift how, and which folders are orphans (nothing is written)."""
    rng = random.Random(spec.seed)
    tree = Tree(spec=spec, root=root or Path("."))
    count = round(spec.portfolios * spec.drift)
    for index, key in enumerate(sorted(rng.sample(range(1, spec.portfolios + 1), count))):
        tree.drifted[key] = KINDS[index % len(KINDS)]
    orphans = round(spec.portfolios * spec.orphans)
    tree.orphan_keys = list(range(spec.portfolios + 1, spec.portfolios + 1 + orphans))
    tree.files = sum(len(tree.names(key)) for key in [*tree.keys, *tree.orphan_keys])
    return tree


def objects(tree: Tree) -> Iterator[str]:
    """Every object path of the tree (drifted on-storage state), relative to the root."""
    for key in [*tree.keys, *tree.orphan_keys]:
        for name in tree.names(key):
            yield f"{key}/{name}"


def build_tree(spec: Spec, root: Path) -> Tree:
    """Write the folders (the drifted on-disk state included); returns what it wrote."""
    tree = plan_tree(spec, root)
    root.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    made: set[str] = set()
    for path in objects(tree):
        folder = path.partition("/")[0]
        if folder not in made:
            (root / folder).mkdir()
            made.add(folder)
        fd = os.open(root / path, flags, 0o644)
        try:
            os.write(fd, JPEG)
        finally:
            os.close(fd)
    return tree


def add_files(root: Path, key: int, names: list[str]) -> None:
    folder = root / str(key)
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(JPEG)


# ---- tables ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Table:
    """The `portfolios` table of one database (SQLite file or a Postgres schema)."""

    url: str  # as the product takes it (sqlite:///… or postgresql://…?options=…)
    tree: Tree
    state: State | None = None
    _engine: sa.Engine | None = None

    @property
    def postgres(self) -> bool:
        return self.url.startswith("postgresql")

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            url = self.url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            self._engine = sa.create_engine(
                url, connect_args={"timeout": 30} if not self.postgres else {}
            )
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def create(self, state: State) -> None:
        images_type = "TEXT[]" if self.postgres else "TEXT"
        with self.engine.begin() as conn:
            if not self.postgres:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.exec_driver_sql(
                "CREATE TABLE portfolios "
                f"(id INTEGER PRIMARY KEY, title TEXT, images {images_type})"
            )
            conn.exec_driver_sql("CREATE TABLE write_log (key TEXT)")
            if self.postgres:
                conn.exec_driver_sql(
                    "CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN INSERT INTO write_log VALUES (NEW.id::text); RETURN NEW; END $$"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER count_writes AFTER UPDATE ON portfolios "
                    "FOR EACH ROW EXECUTE FUNCTION log_write()"
                )
            else:
                conn.exec_driver_sql(
                    "CREATE TRIGGER count_writes AFTER UPDATE ON portfolios "
                    "BEGIN INSERT INTO write_log VALUES (NEW.id); END"
                )
        self._load(state)
        self.state = state
        if self.postgres:
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM ANALYZE portfolios"
                )

    def _load(self, state: State) -> None:
        keys = self.tree.keys
        if self.postgres:
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                with cursor.copy("COPY portfolios (id, title, images) FROM STDIN") as copy:
                    for key in keys:
                        copy.write_row((key, f"portfolio {key}", self.tree.value(key, state)))
                raw.commit()
            finally:
                raw.close()
            return
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO portfolios (id, title, images) VALUES (?, ?, ?)",
                [(k, f"portfolio {k}", _json(self.tree.value(k, state))) for k in keys],
            )

    def prepare(self, state: State) -> None:
        """Put the rows in `state` (only the rows that differ are rewritten); clear the log."""
        tree = self.tree
        if state == "empty":
            changed: list[int] | None = None  # every row
        elif self.state == "empty" or self.state is None:
            changed = None
        else:
            changed = list(tree.drifted)
        with self.engine.begin() as conn:
            if state == "empty":
                conn.exec_driver_sql("UPDATE portfolios SET images = NULL")
            else:
                keys = tree.keys if changed is None else changed
                params = [(self._param(tree.value(k, state)), k) for k in keys]
                cast = "CAST(%s AS TEXT[])" if self.postgres else "?"
                mark = "%s" if self.postgres else "?"
                if params:
                    conn.exec_driver_sql(
                        f"UPDATE portfolios SET images = {cast} WHERE id = {mark}", params
                    )
            conn.exec_driver_sql("DELETE FROM write_log")
        self.state = state
        if not self.postgres:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM portfolios"
                )

    def insert_empty(self, keys: range) -> None:
        """Rows with an empty list and no folder (already in sync), for burst targets."""
        value = "{}" if self.postgres else "[]"
        cast = "CAST(%s AS TEXT[])" if self.postgres else "?"
        mark = "%s" if self.postgres else "?"
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"DELETE FROM portfolios WHERE id >= {keys.start}")
            conn.exec_driver_sql(
                f"INSERT INTO portfolios (id, title, images) VALUES ({mark}, 'burst', {cast})",
                [(k, value) for k in keys],
            )

    def clear_log(self) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM write_log")

    def _param(self, value: list[str] | None) -> Any:
        return value if self.postgres else _json(value)

    def writes(self) -> int:
        """Rows updated since `prepare` (the trigger's count)."""
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM write_log").scalar_one())

    def mismatches(self) -> list[int]:
        """Keys whose row is not the canonical value (after a pass: must be none)."""
        wrong = []
        with self.engine.connect() as conn:
            for key, images in conn.exec_driver_sql("SELECT id, images FROM portfolios"):
                value = json.loads(images) if isinstance(images, str) else images
                if value != self.tree.canonical(int(key)):
                    wrong.append(int(key))
        self.state = "synced" if not wrong else None
        return wrong

    def images(self, key: int) -> list[str] | None:
        with self.engine.connect() as conn:
            value = conn.exec_driver_sql(
                f"SELECT images FROM portfolios WHERE id = {int(key)}"
            ).scalar()
        return json.loads(value) if isinstance(value, str) else value


def _json(value: list[str] | None) -> str | None:
    return None if value is None else json.dumps(value)


# ---- places ---------------------------------------------------------------------------


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@dataclass(slots=True, kw_only=True)
class PostgresPlace:
    """A dedicated schema `bench_<hex>` on a server; dropped by `drop()`."""

    server_url: str  # plain postgresql://…
    schema: str = field(default_factory=lambda: f"bench_{secrets.token_hex(6)}")

    def create(self) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    @property
    def url(self) -> str:
        from tests.servers import with_search_path

        return with_search_path(self.server_url, self.schema)


def remove_tree(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
