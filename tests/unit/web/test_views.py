"""What the console shows for a portfolio: badges, thumbnails, the row beside the folder."""

from __future__ import annotations

from typing import Any

from portfolio_sync.layout import Layout
from portfolio_sync.web import views

PLAIN = Layout()
CDN = Layout(public_url="https://cdn.example.com/{path}")


def found(row: list[str] | None, listing: list[str], **more: Any) -> dict[str, Any]:
    return {
        "key": "7",
        "row_exists": True,
        "columns": {"images": row},
        "listing": {"images": listing},
        "in_sync": False,
        "invalid": None,
        **more,
    }


def test_badges() -> None:
    assert views.badge(found(["7/a.jpg"], ["7/a.jpg"], in_sync=True), PLAIN).text == "in sync"
    drift = views.badge(found(["7/a.jpg", "7/gone.jpg"], ["7/a.jpg", "7/b.jpg", "7/c.jpg"]), PLAIN)
    assert (drift.tone, drift.text) == ("warn", "out of sync +2 \u22121")
    order = views.badge(found(["7/b.jpg", "7/a.jpg"], ["7/a.jpg", "7/b.jpg"]), PLAIN)
    assert order.text == "out of order"
    assert views.badge(found(None, ["7/a.jpg"], row_exists=False), PLAIN).text == "no row"
    bad = views.badge(found(None, [], invalid="column images: not a list"), PLAIN)
    assert (bad.tone, bad.title) == ("bad", "column images: not a list")


def test_compare_matches_rendered_values_and_previews_only_existing_files() -> None:
    lines = views.compare(["7/a.jpg", "7/gone.jpg"], ["7/a.jpg", "7/b 1.jpg"], PLAIN, "/base")
    assert [(line.state, line.value, line.path) for line in lines] == [
        ("both", "7/a.jpg", "7/a.jpg"),
        ("add", None, "7/b 1.jpg"),
        ("remove", "7/gone.jpg", None),
    ]
    assert lines[1].thumb is not None and lines[1].thumb.src == "/base/files/7/b%201.jpg"
    assert lines[2].thumb is None  # the file is gone: no broken image


def test_compare_with_public_urls() -> None:
    url = "https://cdn.example.com/7/a.jpg"
    [line] = views.compare([url], ["7/a.jpg"], CDN, "")
    assert (line.state, line.value) == ("both", url)
    assert line.thumb is not None and line.thumb.src == url
    assert views.compare(None, [], CDN, "") == []


def test_row_shows_the_first_thumbnails_in_natural_order() -> None:
    paths = [f"7/p{n}.jpg" for n in (10, 2, 1, 9, 3, 4, 5, 6)]
    row = views.row(found(paths[:2], paths), PLAIN, "")
    assert [t.name for t in row["thumbs"]] == ["p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg",
                                                "p5.jpg", "p6.jpg"]  # fmt: skip
    assert (row["more"], row["row_count"], row["folder_count"]) == (2, 2, 8)
    assert views.row({"key": "x", "failed": "boom"}, PLAIN, "") == {"key": "x", "failed": "boom"}


def test_image_objects_are_shown_by_their_path() -> None:
    objects = Layout(public_url="https://cdn.example.com/{path}", image_fields=("path", "url"))
    row = [{"path": "7/a.jpg", "alt": "A"}, {"path": "7/gone.jpg"}]
    lines = views.compare(row, ["7/a.jpg"], objects, "")
    assert [(line.state, line.value) for line in lines] == [
        ("both", "https://cdn.example.com/7/a.jpg"),
        ("remove", "https://cdn.example.com/7/gone.jpg"),
    ]
    badge = views.badge(found(row, ["7/a.jpg", "7/b.jpg"]), objects)  # type: ignore[arg-type]
    assert badge.text == "out of sync +1 \u22121"
