"""A row whose images value is not a list of strings is corrected like any drift: the
listing replaces it through the normal compare-and-set, and history keeps the old value."""

from __future__ import annotations

import json
import logging

import pytest

from portfolio_sync.backends import schema
from tests.integration.world import World

UNREADABLE = '{"cover": "1/a.jpg"}'


@pytest.mark.parametrize("bulk", [False, True], ids=["sync_one", "sync_all"])
def test_unreadable_value_is_replaced_and_kept_in_history(
    world: World, bulk: bool, caplog: pytest.LogCaptureFixture
) -> None:
    world.create_table(columns={"images": "jsonb" if world.postgres else "text"})
    world.insert(1, None)
    world.insert(2, ["2/a.jpg"])
    world.execute(
        "UPDATE portfolios SET images = "
        + ("CAST(:v AS JSONB)" if world.postgres else ":v")
        + " WHERE id = 1",
        {"v": UNREADABLE},
    )
    world.put("1/a.jpg")
    world.put("1/b.jpg")
    world.put("2/a.jpg")
    before = world.writes()  # the UPDATE above
    caplog.set_level(logging.INFO, logger="portfolio_sync")
    with world.service() as svc:
        if bulk:
            report = svc.reconciler.sync_all("manual")
            assert report.ok and [r.key for r in report.changed] == ["1"]
        else:
            result = svc.reconciler.sync_one("1", "manual")
            assert result.status == "changed" and result.error is None
        entry = schema.read_history(svc.catalog.engine, "1")[0]
        again = svc.reconciler.sync_one("1", "manual")
    assert world.images(1) == ["1/a.jpg", "1/b.jpg"] and world.images(2) == ["2/a.jpg"]
    assert world.writes() == before + 1 and again.status == "unchanged"
    assert entry["added"] == ["1/a.jpg", "1/b.jpg"]
    raw = entry["replaced"]["images"]  # kept as it was stored: JSON text, or decoded JSON
    assert (json.loads(raw) if isinstance(raw, str) else raw) == json.loads(UNREADABLE)
    replaced = [r for r in caplog.records if getattr(r, "action", "") == "invalid_value_replaced"]
    assert len(replaced) == 1 and replaced[0].levelno == logging.WARNING
    assert replaced[0].exc_info is None and "not a list" in replaced[0].error  # type: ignore[attr-defined]
