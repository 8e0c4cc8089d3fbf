"""Unit tests for portfolio_sync.sources.webhooks.

Fixtures in tests/fixtures/payloads are written from each system's public documentation
(AWS S3 event message structure, SNS HTTP JSON formats, MinIO bucket notifications, the
Supabase storage-api source, Cloudflare R2 event notifications).
"""

from __future__ import annotations

import copy
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portfolio_sync.errors import PayloadError
from portfolio_sync.sources.webhooks import (
    RowEvent,
    StorageEvent,
    StorageHook,
    parse_database_payload,
    parse_storage_payload,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "payloads"
UUID = "0b6f1c1e-6a8e-4f6e-9a7e-2f1d9c3b5a10"
TOPIC = "arn:aws:sns:us-east-1:123456789012:portfolio-events"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def ev(
    path: str,
    kind: Literal["created", "removed"] = "created",
    source: str = "s3",
    bucket: str | None = "portfolio",
) -> StorageEvent:
    return StorageEvent(bucket=bucket, path=path, kind=kind, source=source)


def storage(body: bytes | str | Any, headers: dict[str, str] | None = None) -> StorageHook:
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return parse_storage_payload(body, headers or {})


# --- every fixture, exact result ---------------------------------------------------------

EXPECTED: dict[str, StorageHook] = {
    "s3-put.json": StorageHook(events=(ev("42/summer shoot été 1.jpg"),)),
    "s3-delete.json": StorageHook(events=(ev("42/a+b.png", "removed"),)),
    "s3-test-event.json": StorageHook(events=(), ignored="s3:TestEvent"),
    "s3-batch-mixed.json": StorageHook(
        events=(
            ev("42/big panorama.tif"),
            ev("42/copy of kitchen.jpg"),
            ev("42/old.jpg", "removed"),
            ev("43/expired.png", "removed"),
            ev("43/expired-marker.png", "removed"),
            ev("44/lost.jpg", "removed"),
        )
    ),
    "s3-skipped-only.json": StorageHook(
        events=(),
        ignored="no object events: LifecycleTransition, ObjectAcl:Put, ObjectRestore:Post",
    ),
    "sns-notification.json": StorageHook(
        events=(ev("42/summer shoot été 1.jpg", source="sns"),), topic_arn=TOPIC
    ),
    "sns-notification-delete.json": StorageHook(
        events=(ev("42/café au lait.jpg", "removed", "sns"),), topic_arn=TOPIC
    ),
    "sns-test-event.json": StorageHook(events=(), ignored="s3:TestEvent", topic_arn=TOPIC),
    "sns-subscription-confirmation.json": StorageHook(
        events=(),
        ignored="SubscriptionConfirmation",
        subscribe_url="https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
        f"&TopicArn={TOPIC}&Token=2336412f37EXAMPLE",
        topic_arn=TOPIC,
    ),
    "sns-unsubscribe-confirmation.json": StorageHook(
        events=(), ignored="UnsubscribeConfirmation", topic_arn=TOPIC
    ),
    "minio-put.json": StorageHook(events=(ev("42/new photo.jpg", source="minio"),)),
    "minio-delete.json": StorageHook(events=(ev("42/old #1.jpg", "removed", "minio"),)),
    "minio-key-only.json": StorageHook(events=(ev("42/new photo+1.jpg", source="minio"),)),
    "supabase-storage-objects-insert.json": StorageHook(
        events=(ev(f"{UUID}/before_images/IMG 0001.jpg", source="supabase-db"),)
    ),
    "supabase-storage-objects-update-move.json": StorageHook(
        events=(
            ev(f"{UUID}/before_images/IMG 0001.jpg", "removed", "supabase-db"),
            ev(f"{UUID}/after_images/IMG 0001.jpg", "created", "supabase-db"),
        )
    ),
    "supabase-storage-objects-update-metadata.json": StorageHook(
        events=(ev(f"{UUID}/before_images/IMG 0001.jpg", source="supabase-db"),)
    ),
    "supabase-storage-objects-delete.json": StorageHook(
        events=(ev(f"{UUID}/before_images/IMG 0001.jpg", "removed", "supabase-db"),)
    ),
    "supabase-storage-api-webhook.json": StorageHook(
        events=(ev(f"{UUID}/after_images/final.webp", source="supabase-storage"),)
    ),
    "supabase-storage-api-webhook-remove.json": StorageHook(
        events=(ev(f"{UUID}/after_images/final.webp", "removed", "supabase-storage"),)
    ),
    "supabase-storage-api-webhook-move.json": StorageHook(
        events=(
            ev(f"{UUID}/before_images/final.webp", "created", "supabase-storage"),
            ev(f"{UUID}/after_images/final.webp", "removed", "supabase-storage"),
        )
    ),
    "supabase-storage-api-webhook-metadata.json": StorageHook(
        events=(), ignored="no object events: ObjectUpdated:Metadata"
    ),
    "r2-event.json": StorageHook(events=(ev("42/studio-03.avif", source="r2"),)),
    "r2-copy.json": StorageHook(events=(ev("43/studio-03.avif", source="r2"),)),
    "r2-delete.json": StorageHook(events=(ev("42/studio 03+final%.avif", "removed", "r2"),)),
    "r2-lifecycle-deletion.json": StorageHook(events=(ev("tmp/upload-1.jpg", "removed", "r2"),)),
    "r2-batch.json": StorageHook(
        events=(
            ev("42/studio-03.avif", source="r2"),
            ev("43/studio-03.avif", source="r2"),
            ev("42/été.tif", source="r2"),
            ev("42/studio 03+final%.avif", "removed", "r2"),
            ev("tmp/upload-1.jpg", "removed", "r2"),
        )
    ),
}
ROW_FIXTURES = ["supabase-db-insert.json", "supabase-db-update.json", "supabase-db-delete.json"]


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names - {"s3-encoded-keys.json"} == set(EXPECTED) | set(ROW_FIXTURES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name: str) -> None:
    assert parse_storage_payload(fixture(name), {}) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detection_ignores_headers(name: str) -> None:
    misleading = {"X-Amz-Sns-Message-Type": "Notification", "Content-Type": "text/plain"}
    assert parse_storage_payload(fixture(name), misleading) == EXPECTED[name]


# --- key decoding ------------------------------------------------------------------------

ENCODED = [
    ("42/a+b.jpg", "42/a b.jpg"),
    ("42/a%2Bb.jpg", "42/a+b.jpg"),
    ("42/%23hash.jpg", "42/#hash.jpg"),
    ("42/caf%C3%A9.jpg", "42/caf\u00e9.jpg"),  # NFC: U+00E9
    ("42/cafe%CC%81.jpg", "42/cafe\u0301.jpg"),  # NFD: e + U+0301
    ("42/%F0%9F%93%B7+shot.jpg", "42/\U0001f4f7 shot.jpg"),
    ("42/100%25+done%21.jpg", "42/100% done!.jpg"),
    ("42/%E5%86%99%E7%9C%9F.jpg", "42/\u5199\u771f.jpg"),
    ("42/", "42/"),
    ("", ""),
]


def test_encoded_keys_fixture_decodes_exactly() -> None:
    hook = parse_storage_payload(fixture("s3-encoded-keys.json"), {})
    got = [e.path for e in hook.events]
    want = [decoded for _, decoded in ENCODED]
    assert [[hex(ord(c)) for c in p] for p in got] == [[hex(ord(c)) for c in p] for p in want]


def test_nfc_and_nfd_stay_distinct() -> None:
    nfc, nfd = (e.path for e in storage(_s3(["42/caf%C3%A9.jpg", "42/cafe%CC%81.jpg"])).events)
    assert nfc != nfd
    assert unicodedata.normalize("NFC", nfd) == nfc
    assert len(nfc) == len("42/café.jpg") and len(nfd) == len(nfc) + 1


@pytest.mark.parametrize("source", ["supabase-db", "supabase-storage", "r2"])
@pytest.mark.parametrize("name", ["42/a+b %2B.jpg", "42/cafe\u0301.jpg", "42/caf\u00e9.jpg"])
def test_unencoded_sources_keep_names_verbatim(source: str, name: str) -> None:
    if source == "supabase-db":
        body: Any = _objects_row("INSERT", {"name": name, "bucket_id": "b"})
    elif source == "supabase-storage":
        payload = {"name": name, "bucketId": "b"}
        body = {"type": "Webhook", "event": {"type": "ObjectCreated:Put", "payload": payload}}
    else:
        body = {"action": "PutObject", "bucket": "b", "object": {"key": name}}
    assert storage(body).events == (ev(name, source=source, bucket="b"),)


def _objects_row(row_type: str, record: Any, old_record: Any = None) -> dict[str, Any]:
    """A Supabase database webhook body for a row of storage.objects."""
    return {
        "type": row_type,
        "schema": "storage",
        "table": "objects",
        "record": record,
        "old_record": old_record,
    }


def _s3(keys: list[str], event: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": event,
                "s3": {"bucket": {"name": "portfolio"}, "object": {"key": k}},
            }
            for k in keys
        ]
    }


def test_large_batch_keeps_order_and_duplicates() -> None:
    keys = [f"{i % 50}/img+{i}.jpg" for i in range(2000)] + ["0/img+0.jpg"]
    hook = storage(_s3(keys))
    assert len(hook.events) == 2001
    assert hook.events[0] == hook.events[-1] == ev("0/img 0.jpg")
    assert hook.events[1999].path == "49/img 1999.jpg"


def test_r2_large_batch() -> None:
    body = [
        {"action": "PutObject", "bucket": "p", "object": {"key": f"{i}/a.jpg"}} for i in range(500)
    ]
    assert [e.path for e in storage(body).events] == [f"{i}/a.jpg" for i in range(500)]


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ("ObjectCreated:Post", "created"),
        ("s3:ObjectCreated:PutTagging", "created"),
        ("ObjectRemoved:Delete", "removed"),
        ("s3:ObjectRemoved:DeleteMarkerCreated", "removed"),
        ("LifecycleExpiration:Delete", "removed"),
        ("LifecycleExpiration:DeleteMarkerCreated", "removed"),
        ("ReducedRedundancyLostObject", "removed"),
        ("ObjectRestore:Completed", None),
        ("ObjectRestore:Delete", None),
        ("s3:ObjectAccessed:Get", None),
        ("Replication:OperationFailedReplication", None),
        ("IntelligentTiering", None),
        ("SomethingNew:Invented", None),
    ],
)
def test_s3_event_names(event: str, kind: Literal["created", "removed"] | None) -> None:
    hook = storage(_s3(["k"], event))
    if kind is None:
        assert hook == StorageHook(events=(), ignored=f"no object events: {event}")
    else:
        assert hook.events == (ev("k", kind),)


def test_empty_records_and_empty_r2_batch() -> None:
    assert storage({"Records": []}) == StorageHook(events=(), ignored="no events in payload")
    assert storage([]) == StorageHook(events=(), ignored="empty batch")


def test_s3_record_without_bucket_has_none() -> None:
    body = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "a%20b"}}}]}
    assert storage(body).events == (ev("a b", bucket=None),)


def test_supabase_update_without_old_record_is_created() -> None:
    body = _objects_row("UPDATE", {"name": "1/a.jpg", "bucket_id": "p"})
    assert storage(body).events == (ev("1/a.jpg", source="supabase-db", bucket="p"),)


def test_supabase_update_bucket_change_is_a_move() -> None:
    old, new = {"name": "1/a.jpg", "bucket_id": "old"}, {"name": "1/a.jpg", "bucket_id": "new"}
    body = _objects_row("UPDATE", new, old)
    assert storage(body).events == (
        ev("1/a.jpg", "removed", "supabase-db", "old"),
        ev("1/a.jpg", "created", "supabase-db", "new"),
    )


# --- errors ------------------------------------------------------------------------------


MALFORMED = [b"", b"{", b"{'a': 1}", b"\xff\xfe\xfa", b"NaN", b"[Infinity]", b"\xef\xbb\xbf{"]
TOO_BIG = [b"[" * 100_000, b"1" * 5000]  # recursion limit, int digits limit
NOT_AN_OBJECT = [b'"x"', b"1", b"null", b"true"]


@pytest.mark.parametrize("body", MALFORMED + TOO_BIG + NOT_AN_OBJECT)
def test_malformed_or_not_an_object_is_400(body: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        parse_storage_payload(body, {})
    assert info.value.status == 400
    with pytest.raises(PayloadError) as info:
        parse_database_payload(body, {})
    assert info.value.status == 400


S3_OK = _s3(["k"])


def _with(doc: Any, path: tuple[str | int, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return doc


def _sns_wrap(message: str) -> dict[str, Any]:
    return {"Type": "Notification", "TopicArn": TOPIC, "Message": message}


UNPROCESSABLE: dict[str, Any] = {
    "empty object": {},
    "unknown object": {"hello": "world"},
    "array of non-R2": [1, 2],
    "R2 array item without object": [{"action": "PutObject"}],
    "Records not a list": {"Records": {"a": 1}},
    "record not an object": {"Records": ["x"]},
    "eventName not a string": _with(S3_OK, ("Records", 0, "eventName"), 5),
    "s3 missing": {"Records": [{"eventName": "ObjectCreated:Put"}]},
    "object missing": _with(S3_OK, ("Records", 0, "s3", "object"), None),
    "key not a string": _with(S3_OK, ("Records", 0, "s3", "object", "key"), 42),
    "bucket name not a string": _with(S3_OK, ("Records", 0, "s3", "bucket", "name"), ["p"]),
    "bucket not an object": _with(S3_OK, ("Records", 0, "s3", "bucket"), "p"),
    "key with invalid UTF-8 escape": _with(S3_OK, ("Records", 0, "s3", "object", "key"), "a%FF"),
    "key with lone surrogate": _with(S3_OK, ("Records", 0, "s3", "object", "key"), "a\ud800"),
    "SNS Message not JSON": _sns_wrap("hello"),
    "SNS Message not S3": _sns_wrap('{"foo": 1}'),
    "SNS Message a list": _sns_wrap("[1]"),
    "SNS Message missing": {"Type": "Notification"},
    "SNS Message not a string": {"Type": "Notification", "Message": {"Records": []}},
    "SNS Message deep": _sns_wrap("[" * 100_000),
    "SNS SubscribeURL missing": {"Type": "SubscriptionConfirmation", "TopicArn": TOPIC},
    "SNS TopicArn wrong type": {"Type": "UnsubscribeConfirmation", "TopicArn": 1},
    "MinIO Key without slash": {"EventName": "s3:ObjectCreated:Put", "Key": "nobucket"},
    "MinIO Key not a string": {"EventName": "s3:ObjectCreated:Put", "Key": 1},
    "MinIO EventName not a string": {"EventName": 1, "Key": "b/k"},
    "Supabase storage payload name null": {
        "type": "Webhook",
        "event": {"type": "ObjectCreated:Put", "payload": {"name": None, "bucketId": "b"}},
    },
    "Supabase storage event not an object": {"type": "Webhook", "event": "x"},
    "Supabase storage oldObject wrong": {
        "type": "Webhook",
        "event": {
            "type": "ObjectCreated:Move",
            "payload": {"name": "a", "bucketId": "b", "oldObject": "a"},
        },
    },
    "storage.objects name not a string": _objects_row("INSERT", {"name": 1, "bucket_id": "b"}),
    "row webhook on another table": json.loads(fixture("supabase-db-insert.json")),
    "R2 key not a string": {"action": "PutObject", "bucket": "b", "object": {"key": None}},
    "R2 bucket not a string": {"action": "PutObject", "bucket": 1, "object": {"key": "k"}},
    "R2 action not a string": {"action": 1, "object": {"key": "k"}},
}


@pytest.mark.parametrize("case", sorted(UNPROCESSABLE))
def test_unprocessable_is_422(case: str) -> None:
    with pytest.raises(PayloadError) as info:
        storage(UNPROCESSABLE[case])
    assert info.value.status == 422
    assert str(info.value)


def test_unknown_shape_message_names_what_was_expected() -> None:
    with pytest.raises(PayloadError, match="expected an S3/MinIO event"):
        storage({"hello": "world"})


# --- parse_database_payload --------------------------------------------------------------


def test_database_fixtures() -> None:
    insert = parse_database_payload(fixture("supabase-db-insert.json"), {})
    assert (insert.type, insert.schema, insert.table) == ("INSERT", "public", "portfolios")
    assert insert.record is not None and insert.record["id"] == UUID
    assert insert.old_record is None
    update = parse_database_payload(fixture("supabase-db-update.json"), {})
    assert update.type == "UPDATE"
    assert update.record is not None and update.record["title"] == "Kitchen remodel (final)"
    assert update.old_record is not None and update.old_record["title"] == "Kitchen remodel"
    delete = parse_database_payload(fixture("supabase-db-delete.json"), {})
    assert delete == RowEvent(
        type="DELETE",
        schema="public",
        table="portfolios",
        record=None,
        old_record=json.loads(fixture("supabase-db-delete.json"))["old_record"],
    )


def test_database_accepts_storage_objects_rows_too() -> None:
    row = parse_database_payload(fixture("supabase-storage-objects-insert.json"), {})
    assert (row.schema, row.table) == ("storage", "objects")


def test_database_missing_record_key_counts_as_null() -> None:
    body = {"type": "DELETE", "schema": "public", "table": "t", "old_record": {"id": 1}}
    assert parse_database_payload(json.dumps(body).encode(), {}).record is None


ROW_OK = {"type": "INSERT", "schema": "public", "table": "t", "record": {"id": 1}}


@pytest.mark.parametrize(
    "body",
    [
        {},
        _with(ROW_OK, ("type",), "TRUNCATE"),
        _with(ROW_OK, ("type",), "insert"),
        _with(ROW_OK, ("type",), ["INSERT"]),
        _with(ROW_OK, ("schema",), None),
        _with(ROW_OK, ("table",), 1),
        _with(ROW_OK, ("record",), None),
        _with(ROW_OK, ("record",), [1]),
        _with(ROW_OK, ("old_record",), "x"),
        _with(_with(ROW_OK, ("type",), "UPDATE"), ("record",), None),
        {"type": "DELETE", "schema": "public", "table": "t", "record": None, "old_record": None},
        {"type": "DELETE", "schema": "public", "table": "t", "record": {"id": 1}},
    ],
)
def test_database_shape_errors_are_422(body: Any) -> None:
    with pytest.raises(PayloadError) as info:
        parse_database_payload(json.dumps(body).encode(), {})
    assert info.value.status == 422


# --- fuzz: only PayloadError may escape ---------------------------------------------------

KEYS = [
    "Records",
    "eventName",
    "s3",
    "bucket",
    "object",
    "key",
    "name",
    "Type",
    "Message",
    "SubscribeURL",
    "TopicArn",
    "Event",
    "EventName",
    "Key",
    "type",
    "table",
    "schema",
    "record",
    "old_record",
    "bucket_id",
    "event",
    "payload",
    "bucketId",
    "oldObject",
    "action",
]
WORDS = [
    "ObjectCreated:Put",
    "s3:ObjectRemoved:Delete",
    "Notification",
    "SubscriptionConfirmation",
    "UnsubscribeConfirmation",
    "s3:TestEvent",
    "INSERT",
    "UPDATE",
    "DELETE",
    "Webhook",
    "ObjectCreated:Move",
    "PutObject",
    "DeleteObject",
    "storage",
    "objects",
    "a%FF",
    "%C3%A9+x",
    "b/k",
    "\ud800",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(WORDS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=12,
)
FIXTURE_DOCS = {p.name: json.loads(p.read_bytes()) for p in sorted(FIXTURES.glob("*.json"))}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


FIXTURE_PATHS = {name: list(_paths(doc))[1:] for name, doc in FIXTURE_DOCS.items()}


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> Any:
    """A real fixture with one or two nodes replaced by random JSON or deleted."""
    name = draw(st.sampled_from(sorted(FIXTURE_DOCS)))
    doc = copy.deepcopy(FIXTURE_DOCS[name])
    for path in draw(st.lists(st.sampled_from(FIXTURE_PATHS[name]), min_size=1, max_size=2)):
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this node
        if not isinstance(parent, dict | list):
            continue  # an earlier change replaced the parent by a string

        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    if isinstance(doc, dict) and "Records" in doc and draw(st.booleans()):
        doc = _sns_wrap(json.dumps(doc))  # the same damage, one envelope deeper
    return doc


def _check(body: bytes) -> None:
    try:
        hook = parse_storage_payload(body, {})
    except PayloadError as exc:
        assert exc.status in (400, 422)
    else:
        assert isinstance(hook, StorageHook)
        for event in hook.events:
            assert event.kind in ("created", "removed")
            event.path.encode("utf-8")
        assert hook.events or hook.ignored
    try:
        row = parse_database_payload(body, {})
    except PayloadError as exc:
        assert exc.status in (400, 422)
    else:
        assert row.type in ("INSERT", "UPDATE", "DELETE")


FUZZ = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(FUZZ, max_examples=2000)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(body: bytes) -> None:
    _check(body)


@FUZZ
@given(json_values)
def test_fuzz_random_json(value: Any) -> None:
    _check(json.dumps(value).encode())


@settings(FUZZ, max_examples=1000)
@given(mutated_fixtures())
def test_fuzz_mutated_fixtures(value: Any) -> None:
    _check(json.dumps(value).encode())
