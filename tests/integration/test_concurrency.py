"""Invariant 1: an older listing never overwrites a newer one.

The deterministic tests pause a real listing at a chosen point (a thin wrapper around the
real storage backend) while a newer sync completes, then let the stale one finish. The
stress test interleaves uploads, `sync_one` and `sync_all` in threads at random.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator

import sqlalchemy as sa

from portfolio_sync.backends.storage import Storage
from portfolio_sync.models import ObjectInfo
from tests.integration.world import World


class PausingStorage:
    """Delegates to a real backend; blocks once when the listing reaches `key`."""

    def __init__(self, inner: Storage, key: str) -> None:
        self.inner = inner
        self.key = key
        self.description = inner.description
        self.reached = threading.Event()
        self.release = threading.Event()

    def _pause(self) -> None:
        if not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(30)

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        objects = self.inner.list_prefix(prefix)
        if prefix == f"{self.key}/":
            self._pause()
        return objects

    def iter_folders(self, prefix: str) -> Iterator[tuple[str, list[ObjectInfo]]]:
        for name, objects in self.inner.iter_folders(prefix):
            if name == self.key:
                self._pause()
            yield name, objects

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return self.inner.read(path, max_bytes=max_bytes)

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


def _run_stale(world: World, fn_name: str) -> None:
    world.create_table()
    world.insert(1, None)
    world.insert(2, None)
    world.put("1/old.jpg")
    world.put("2/x.jpg")
    with world.service() as fresh, world.service() as stale:
        pausing = PausingStorage(stale.storage, "1")
        stale.reconciler.storage = pausing
        outcome: dict[str, object] = {}

        def stale_sync() -> None:
            if fn_name == "sync_all":
                outcome["report"] = stale.reconciler.sync_all("stale")
            else:
                outcome["result"] = stale.reconciler.sync_one("1", "stale")

        thread = threading.Thread(target=stale_sync)
        thread.start()
        assert pausing.reached.wait(30)  # the stale sync has listed 1/ without new.jpg
        world.put("1/new.jpg")
        assert fresh.reconciler.sync_one("1", "fresh").status == "changed"
        pausing.release.set()
        thread.join(30)
        assert not thread.is_alive()
    assert world.images(1) == ["1/new.jpg", "1/old.jpg"]


def test_stale_full_pass_cannot_overwrite_newer_row(world: World) -> None:
    _run_stale(world, "sync_all")
    assert world.images(2) == ["2/x.jpg"]


def test_stale_sync_one_retries_instead_of_overwriting(world: World) -> None:
    _run_stale(world, "sync_one")
    # The stale sync re-read and re-listed: it either wrote the full list or found it done.
    assert "1/new.jpg" in (world.images(1) or [])


def _log_every_update(world: World) -> None:
    """A trigger recording each UPDATE of the images column: (key, old, new) as JSON."""
    world.execute("CREATE TABLE image_log (key TEXT, old TEXT, new TEXT)")
    if world.postgres:
        world.execute(
            "CREATE FUNCTION log_images() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO image_log VALUES (NEW.id::text, array_to_json(OLD.images)::text, "
            "array_to_json(NEW.images)::text); RETURN NEW; END $$"
        )
        world.execute(
            "CREATE TRIGGER log_images AFTER UPDATE ON portfolios "
            "FOR EACH ROW EXECUTE FUNCTION log_images()"
        )
    else:
        world.execute(
            "CREATE TRIGGER log_images AFTER UPDATE ON portfolios BEGIN "
            "INSERT INTO image_log VALUES (NEW.id, OLD.images, NEW.images); END"
        )


def _shrinking_updates(world: World) -> list[tuple[str, list[str], list[str]]]:
    with world.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key, old, new FROM image_log")).all()
    shrunk = []
    for key, old, new in rows:
        before, after = json.loads(old or "[]") or [], json.loads(new or "[]") or []
        if not set(before) <= set(after):
            shrunk.append((str(key), before, after))
    return shrunk


def test_random_interleaving_never_replaces_a_newer_value(world: World) -> None:
    """Uploads only add files, so every listing contains the ones before it: a write that
    drops an image can only come from an older listing replacing a newer row. A trigger
    records every update; none may shrink a row. The syncers are stopped before the final
    comparison, so nothing repairs a stale write behind the test's back."""
    world.create_table()
    _log_every_update(world)
    keys = [1, 2, 3]
    for key in keys:
        world.insert(key, None)
    stop = threading.Event()
    errors: list[BaseException] = []
    rng = random.Random(7)

    with world.service() as svc:

        def syncer(full: bool) -> None:
            try:
                while not stop.is_set():
                    if full:
                        svc.reconciler.sync_all("stress", force=True)
                    else:
                        svc.reconciler.sync_one(str(rng.choice(keys)), "stress")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=syncer, args=(i < 2,)) for i in range(5)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 40
        for i in range(150):
            key = rng.choice(keys)
            world.put(f"{key}/img{i}.jpg")
            time.sleep(rng.random() * 0.01)
            assert time.monotonic() < deadline
        stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert not errors
        assert _shrinking_updates(world) == []
        for key in keys:  # alone now: one sync per key brings it up to date
            svc.reconciler.sync_one(str(key), "final")
    with world.service() as svc:  # compare with the storage listing itself
        for key in keys:
            listing = sorted(o.path for o in svc.storage.list_prefix(f"{key}/"))
            assert sorted(world.images(key) or []) == listing
    assert _shrinking_updates(world) == []
