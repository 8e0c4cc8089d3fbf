"""Faults between the service and its backends: nothing is wiped, the error is visible, and
the rows converge once the fault clears.

Storage faults are injected by a proxy on 127.0.0.1 between the product's S3 client and
moto (``CountingProxy.fault``): S3 500s, slow answers, connection resets, and bucket
listings cut off mid-body. The database fault is PostgreSQL terminating the service's
backends in the middle of a full pass (held open by a slow listing).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from portfolio_sync.backends import schema
from portfolio_sync.models import PassReport
from tests.integration.world import World
from tests.servers import CountingProxy, Fault, S3Target

KEYS = range(1, 9)


@pytest.fixture
def faulty(pg_url: str, s3_bucket: S3Target) -> Iterator[tuple[World, CountingProxy]]:
    """PostgreSQL + a bucket reached through a fault-injecting proxy; 8 synced rows."""
    with CountingProxy(s3_bucket.endpoint) as proxy:
        target = dataclasses.replace(s3_bucket, endpoint=proxy.endpoint)
        world = World(kind="postgres-s3", database_url=pg_url, s3=target)
        try:
            world.create_table()
            for key in KEYS:
                world.insert(key, None)
                world.put(f"{key}/a.jpg")
                world.put(f"{key}/b.jpg")
            with world.service() as svc:
                assert svc.reconciler.sync_all("setup").ok
            yield world, proxy
        finally:
            world.close()
            target.close()


def rows(world: World) -> dict[int, list[str] | None]:
    return {key: world.images(key) for key in KEYS}


def drift(world: World) -> dict[int, list[str] | None]:
    """Real changes made before the fault: what the rows must become once it clears."""
    expected = rows(world)
    world.delete("1/a.jpg")
    world.put("2/c.jpg")
    expected[1] = ["1/b.jpg"]
    expected[2] = ["2/a.jpg", "2/b.jpg", "2/c.jpg"]
    return expected


@pytest.mark.parametrize("fault", ["500", "reset", "truncate-listing"])
def test_storage_fault_wipes_nothing_shows_the_error_and_converges_after(
    faulty: tuple[World, CountingProxy], fault: Fault
) -> None:
    world, proxy = faulty
    expected = drift(world)
    before, writes = rows(world), world.writes()
    with world.service() as svc:
        proxy.fault = fault
        try:
            report = svc.reconciler.sync_all("fault")
            one = svc.reconciler.sync_one("3", "fault")
        finally:
            proxy.fault = None
        assert not report.ok and report.aborted, report
        assert one.status == "error" and one.error
        assert rows(world) == before and world.writes() == writes  # nothing written
        state = schema.read_state(svc.catalog.engine, "3")
        assert state is not None and state["last_error"]  # visible in status and the API
        assert svc.reconciler.sync_all("recovered").ok
        assert rows(world) == expected
        assert svc.reconciler.sync_one("3", "recovered").status == "unchanged"
        cleared = schema.read_state(svc.catalog.engine, "3")
        assert cleared is not None and cleared["last_error"] is None


def test_slow_storage_is_only_slow(faulty: tuple[World, CountingProxy]) -> None:
    world, proxy = faulty
    expected = drift(world)
    proxy.slow_seconds = 1.5
    with world.service() as svc:
        proxy.fault = "slow"
        try:
            began = time.monotonic()
            report = svc.reconciler.sync_all("slow")
            took = time.monotonic() - began
        finally:
            proxy.fault = None
    assert report.ok and took >= 1.5
    assert rows(world) == expected


def test_database_backend_terminated_mid_pass(
    faulty: tuple[World, CountingProxy], pg_url: str
) -> None:
    """The pass has read its rows' snapshot and waits on a slow listing when PostgreSQL
    terminates every connection of the service: it fails, writes nothing, and the next
    pass (on new connections) converges."""
    world, proxy = faulty
    expected = drift(world)
    before, writes = rows(world), world.writes()
    name = f"svc-{secrets.token_hex(4)}"
    url = f"{pg_url}&application_name={name}"
    proxy.slow_seconds = 3.0
    with world.service(database_url=url) as svc, psycopg.connect(pg_url, autocommit=True) as dba:
        outcome: list[PassReport] = []
        proxy.fault = "slow"
        runner = threading.Thread(target=lambda: outcome.append(svc.reconciler.sync_all("x")))
        runner.start()
        try:
            killed = 0
            deadline = time.monotonic() + 20
            while not killed and time.monotonic() < deadline:
                killed = len(
                    dba.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s AND state <> 'idle'",
                        (name,),
                    ).fetchall()
                )
                time.sleep(0.05)
        finally:
            runner.join(60)
            proxy.fault = None
        assert killed, "the pass never held a busy connection"
        assert outcome and not outcome[0].ok and outcome[0].aborted
        assert rows(world) == before and world.writes() == writes
        assert svc.reconciler.sync_all("recovered").ok
    assert rows(world) == expected
