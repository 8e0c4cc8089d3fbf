"""Parse incoming webhook bodies into storage and row events. Pure: no I/O, no HTTP.

Events are hints (see ARCHITECTURE.md): the reconciler re-lists storage and re-reads the
row, so these parsers only need the object path and bucket, never sizes or ETags. They are
lenient with what they ignore (unknown fields, unknown event names) and strict with what
they use: a field we read that has the wrong type is a ``PayloadError`` (422), a body that
is not JSON is a 400, and no other exception escapes for any input bytes.

Shapes are recognised by content, not by headers, because SNS raw delivery, proxies and
queue forwarders change or drop headers; ``headers`` is accepted for symmetry with
``verify_request`` and future hints.

Key encoding, per system (checked against each system's public documentation):

* AWS S3, S3 via SNS, MinIO: ``s3.object.key`` is URL-encoded with ``+`` for space
  (``unquote_plus``; MinIO even encodes ``/`` as ``%2F``). MinIO's top-level ``Key`` is
  ``bucket/key`` unescaped and used only when ``Records`` is absent.
* Supabase (database webhook on ``storage.objects`` and the Storage API webhook): names
  come from the database as stored, not encoded.
* Cloudflare R2 event notifications: the documented ``object.key`` is "the key (or name)
  of the object", with no encoding mentioned, unlike S3's docs which state it; so keys
  are taken verbatim. Decoding them would corrupt keys that contain ``%`` or ``+``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from portfolio_sync.errors import PayloadError

__all__ = [
    "RowEvent",
    "StorageEvent",
    "StorageHook",
    "parse_database_payload",
    "parse_storage_payload",
]

Kind = Literal["created", "removed"]
RowType = Literal["INSERT", "UPDATE", "DELETE"]

_SNS_TYPES = frozenset({"Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"})
_S3_REMOVED = ("ObjectRemoved:", "LifecycleExpiration:Delete", "ReducedRedundancyLostObject")
_ROW_TYPES: Mapping[str, RowType] = {"INSERT": "INSERT", "UPDATE": "UPDATE", "DELETE": "DELETE"}
_R2_ACTIONS: Mapping[str, Kind] = {
    "PutObject": "created",
    "CopyObject": "created",
    "CompleteMultipartUpload": "created",
    "DeleteObject": "removed",
    "LifecycleDeletion": "removed",
}
_EXPECTED = (
    "expected an S3/MinIO event (Records), an SNS message, a Supabase storage webhook, "
    "a Supabase database webhook on storage.objects or an R2 event notification"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageEvent:
    """One object created or removed. ``path`` is the exact stored key (decoded, not
    normalised); it may be empty or end in ``/`` (a folder marker): callers filter."""

    bucket: str | None
    path: str
    kind: Kind
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageHook:
    """What one storage webhook delivery asks for.

    ``events`` may repeat a path (callers dedupe). When ``events`` is empty, ``ignored``
    says why (a test event, a handshake, only uninteresting event names). For an SNS
    ``SubscriptionConfirmation`` ``subscribe_url`` is set: the caller confirms by fetching
    it, after checking that it is an ``https://sns.<region>.amazonaws.com`` URL, because
    its content is attacker-controlled if authentication is weak. It is deliberately not
    set for ``UnsubscribeConfirmation``, whose URL would re-subscribe.
    """

    events: tuple[StorageEvent, ...]
    ignored: str | None = None
    subscribe_url: str | None = None
    topic_arn: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RowEvent:
    """A Supabase database webhook (pg_net): one row inserted, updated or deleted."""

    type: RowType
    schema: str
    table: str
    record: Mapping[str, Any] | None
    old_record: Mapping[str, Any] | None


def parse_storage_payload(body: bytes, headers: Mapping[str, str]) -> StorageHook:
    """Parse a storage webhook body from any supported system into a ``StorageHook``.

    S3-style event names (an optional ``s3:`` prefix is ignored):

    * ``ObjectCreated:*`` is created.
    * ``ObjectRemoved:*`` (delete and delete-marker) and ``LifecycleExpiration:Delete*``
      are removed: the object leaves the listing.
    * ``ReducedRedundancyLostObject`` is removed, so the key gets re-checked.
    * Everything else (``ObjectRestore:*``, ``ObjectTagging:*``, ``ObjectAcl:*``,
      ``LifecycleTransition``, ``IntelligentTiering``, ``Replication:*``,
      ``ObjectAccessed:*``) leaves the listing unchanged and is skipped, as are unknown
      names (providers add new ones): skipping is not an error.
    """
    del headers  # detection is by content; see the module docstring
    data = _load_json(body)
    if isinstance(data, list):
        return _r2_batch(data)
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object (or an array of R2 messages)", status=400)
    return _storage_object(data)


def parse_database_payload(body: bytes, headers: Mapping[str, str]) -> RowEvent:
    """Parse a Supabase database webhook body (``type``/``schema``/``table``/``record``/
    ``old_record``). A missing ``record`` or ``old_record`` counts as null; INSERT and
    UPDATE need a ``record`` object, DELETE needs an ``old_record`` object."""
    del headers
    data = _load_json(body)
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object", status=400)
    return _row_event(data)


# --- JSON and field helpers ------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(body: bytes) -> object:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise PayloadError("body must be bytes", status=400)
    try:
        return json.loads(bytes(body), parse_constant=_reject_constant)
    except RecursionError as exc:
        raise PayloadError("body is nested too deeply", status=400) from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise PayloadError(f"body is not valid JSON: {exc}", status=400) from exc


def _obj(parent: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise PayloadError(f"{where}.{name} must be an object")
    return value


def _str(parent: Mapping[str, Any], name: str, where: str) -> str:
    value = parent.get(name)
    if not isinstance(value, str):
        raise PayloadError(f"{where}.{name} must be a string")
    return value


def _opt_str(parent: Mapping[str, Any], name: str, where: str) -> str | None:
    value = parent.get(name)
    if value is not None and not isinstance(value, str):
        raise PayloadError(f"{where}.{name} must be a string or null")
    return value


def _event(bucket: str | None, path: str, kind: Kind, source: str, where: str) -> StorageEvent:
    # Keys are valid UTF-8 on every backend; a lone surrogate (from a "\ud800" escape)
    # would only blow up later, far from its cause.
    for text in (path, bucket or ""):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PayloadError(f"{where}: key or bucket is not valid Unicode") from exc
    return StorageEvent(bucket=bucket, path=path, kind=kind, source=source)


def _hook(events: list[StorageEvent], skipped: list[str]) -> StorageHook:
    if events:
        return StorageHook(events=tuple(events))
    names = sorted({name[:64] for name in skipped})  # payload text: keep log lines short
    if not names:
        return StorageHook(events=(), ignored="no events in payload")
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return StorageHook(events=(), ignored=f"no object events: {shown}")


# --- shape dispatch --------------------------------------------------------------------


def _storage_object(data: dict[str, Any]) -> StorageHook:
    sns_type = data.get("Type")
    if isinstance(sns_type, str) and sns_type in _SNS_TYPES:
        return _sns(data, sns_type)
    if data.get("Event") == "s3:TestEvent":
        return StorageHook(events=(), ignored="s3:TestEvent")
    minio = "EventName" in data or "EventType" in data
    if "Records" in data:
        return _s3_records(data["Records"], "minio" if minio else "s3")
    if minio and "Key" in data:
        return _minio_key(data)
    row_type = data.get("type")
    if row_type == "Webhook" and "event" in data:
        return _supabase_storage(data)
    if isinstance(row_type, str) and row_type in _ROW_TYPES and "table" in data:
        return _storage_objects_row(_row_event(data))
    if "action" in data and "object" in data:
        return _hook(*_r2_message(data, "body"))
    raise PayloadError(f"unrecognised payload: {_EXPECTED}")


def _sns(data: dict[str, Any], sns_type: str) -> StorageHook:
    topic_arn = _opt_str(data, "TopicArn", "SNS")
    if sns_type == "SubscriptionConfirmation":
        url = _str(data, "SubscribeURL", "SNS")
        return StorageHook(events=(), ignored=sns_type, subscribe_url=url, topic_arn=topic_arn)
    if sns_type == "UnsubscribeConfirmation":
        return StorageHook(events=(), ignored=sns_type, topic_arn=topic_arn)
    message = _str(data, "Message", "SNS")
    try:
        inner = json.loads(message, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise PayloadError("SNS Message is nested too deeply") from exc
    except ValueError as exc:
        raise PayloadError("SNS Message is not JSON; expected an S3 event") from exc
    if isinstance(inner, dict) and inner.get("Event") == "s3:TestEvent":
        return StorageHook(events=(), ignored="s3:TestEvent", topic_arn=topic_arn)
    if not isinstance(inner, dict) or "Records" not in inner:
        raise PayloadError("SNS Message is not an S3 event (no Records)")
    hook = _s3_records(inner["Records"], "sns")
    return StorageHook(events=hook.events, ignored=hook.ignored, topic_arn=topic_arn)


# --- S3, SNS, MinIO --------------------------------------------------------------------


def _s3_kind(event_name: str) -> Kind | None:
    name = event_name.removeprefix("s3:")
    if name.startswith("ObjectCreated:"):
        return "created"
    return "removed" if name.startswith(_S3_REMOVED) else None


def _decode_s3_key(key: str, where: str) -> str:
    try:
        return unquote_plus(key, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{where}: key is not percent-encoded UTF-8") from exc


def _s3_records(records: object, source: str) -> StorageHook:
    if not isinstance(records, list):
        raise PayloadError("Records must be an array")
    events: list[StorageEvent] = []
    skipped: list[str] = []
    for i, record in enumerate(records):
        where = f"Records[{i}]"
        if not isinstance(record, dict):
            raise PayloadError(f"{where} must be an object")
        name = _str(record, "eventName", where)
        kind = _s3_kind(name)
        if kind is None:
            skipped.append(name)
            continue
        s3 = _obj(record, "s3", where)
        bucket: str | None = None
        if "bucket" in s3:
            bucket = _opt_str(_obj(s3, "bucket", f"{where}.s3"), "name", f"{where}.s3.bucket")
        key = _str(_obj(s3, "object", f"{where}.s3"), "key", f"{where}.s3.object")
        events.append(_event(bucket, _decode_s3_key(key, where), kind, source, where))
    return _hook(events, skipped)


def _minio_key(data: dict[str, Any]) -> StorageHook:
    # Only without Records: then the unescaped top-level "bucket/key" is all we have.
    name = data.get("EventName", data.get("EventType"))
    if not isinstance(name, str):
        raise PayloadError("MinIO EventName must be a string")
    kind = _s3_kind(name)
    if kind is None:
        return _hook([], [name])
    bucket, sep, path = _str(data, "Key", "MinIO").partition("/")
    if not sep:
        raise PayloadError("MinIO Key must be 'bucket/key'")
    return StorageHook(events=(_event(bucket, path, kind, "minio", "MinIO Key"),))


# --- Supabase --------------------------------------------------------------------------


def _supabase_storage(data: dict[str, Any]) -> StorageHook:
    """Self-hosted Storage API webhook (``WEBHOOK_URL``). ``ObjectCreated:*`` (Put, Post,
    Copy, Move) is created and ``ObjectRemoved:*`` (Delete, Move) removed;
    ``ObjectUpdated:Metadata`` leaves the listing unchanged and is skipped. A move's
    created event also names ``payload.oldObject``, reported as removed too."""
    event = _obj(data, "event", "body")
    event_type = _str(event, "type", "event")
    payload = _obj(event, "payload", "event")
    if event_type.startswith("ObjectCreated:"):
        kind: Kind = "created"
    elif event_type.startswith("ObjectRemoved:"):
        kind = "removed"
    else:
        return _hook([], [event_type])
    where = "event.payload"
    name = _str(payload, "name", where)
    bucket = _opt_str(payload, "bucketId", where)
    events = [_event(bucket, name, kind, "supabase-storage", where)]
    if kind == "created" and payload.get("oldObject") is not None:
        old = _obj(payload, "oldObject", where)
        old_where = f"{where}.oldObject"
        old_name = _str(old, "name", old_where)
        old_bucket = _opt_str(old, "bucketId", old_where)
        events.append(_event(old_bucket, old_name, "removed", "supabase-storage", old_where))
    return StorageHook(events=tuple(events))


def _row_event(data: dict[str, Any]) -> RowEvent:
    raw_type = data.get("type")
    row_type = _ROW_TYPES.get(raw_type) if isinstance(raw_type, str) else None
    if row_type is None:
        raise PayloadError("type must be INSERT, UPDATE or DELETE")
    schema = _str(data, "schema", "body")
    table = _str(data, "table", "body")
    record = data.get("record")
    old_record = data.get("old_record")
    if record is not None and not isinstance(record, dict):
        raise PayloadError("record must be an object or null")
    if old_record is not None and not isinstance(old_record, dict):
        raise PayloadError("old_record must be an object or null")
    if (old_record if row_type == "DELETE" else record) is None:
        needed = "old_record" if row_type == "DELETE" else "record"
        raise PayloadError(f"{row_type} needs a {needed} object")
    return RowEvent(type=row_type, schema=schema, table=table, record=record, old_record=old_record)


def _storage_objects_row(row: RowEvent) -> StorageHook:
    """Database webhook on ``storage.objects``. An UPDATE that renames or re-buckets a row
    (a move) yields removed(old) and created(new); other UPDATEs (metadata) yield created,
    which costs the caller one no-op sync at most."""
    if (row.schema, row.table) != ("storage", "objects"):
        raise PayloadError(
            f"database webhook for {row.schema[:64]}.{row.table[:64]}; this endpoint expects "
            "storage.objects (row webhooks go to /hooks/database)"
        )

    def located(record: Mapping[str, Any], where: str) -> tuple[str | None, str]:
        return _opt_str(record, "bucket_id", where), _str(record, "name", where)

    src = "supabase-db"
    if row.type == "DELETE" and row.old_record is not None:  # _row_event ensures the dict
        bucket, name = located(row.old_record, "old_record")
        return StorageHook(events=(_event(bucket, name, "removed", src, "old_record"),))
    new = located(row.record or {}, "record")
    events = [_event(*new, "created", src, "record")]
    if row.type == "UPDATE" and row.old_record is not None:
        old = located(row.old_record, "old_record")
        if old != new:
            events.insert(0, _event(*old, "removed", src, "old_record"))
    return StorageHook(events=tuple(events))


# --- Cloudflare R2 ---------------------------------------------------------------------


def _r2_message(data: dict[str, Any], where: str) -> tuple[list[StorageEvent], list[str]]:
    action = _str(data, "action", where)
    kind = _R2_ACTIONS.get(action)
    if kind is None:
        return [], [action]
    bucket = _opt_str(data, "bucket", where)
    key = _str(_obj(data, "object", where), "key", f"{where}.object")
    return [_event(bucket, key, kind, "r2", where)], []


def _r2_batch(items: list[Any]) -> StorageHook:
    """A JSON array of R2 messages, as a queue consumer forwards a batch's bodies."""
    if not items:
        return StorageHook(events=(), ignored="empty batch")
    events: list[StorageEvent] = []
    skipped: list[str] = []
    for i, item in enumerate(items):
        where = f"[{i}]"
        if not isinstance(item, dict) or "action" not in item or "object" not in item:
            raise PayloadError(f"{where} is not an R2 event notification; {_EXPECTED}")
        found, unknown = _r2_message(item, where)
        events += found
        skipped += unknown
    return _hook(events, skipped)
