"""A list-only S3 endpoint on 127.0.0.1 for listing benchmarks at scale, with a fixed
latency per request.

moto scans the whole bucket for every list request (about half a second per page at 20k
objects), so a million objects behind it measure moto. This server holds the keys in a
sorted list and answers ListObjectsV2 (``prefix``, ``start-after``, ``continuation-token``,
``max-keys``, no delimiter) with a bisect, after sleeping ``latency`` seconds: an internet
round trip, as the issue's "30 ms per request" asks. Every request is counted. Nothing
else of S3 is served (the product's full pass only lists).
"""

from __future__ import annotations

import bisect
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

STAMP = "2026-12-01T00:00:00.000Z"


class ListServer:
    def __init__(self, bucket: str, keys: list[str], *, size: int, latency: float) -> None:
        self.bucket = bucket
        self.keys = sorted(keys, key=str.encode)
        self.encoded = [k.encode() for k in self.keys]
        self.size = size
        self.latency = latency
        # each key's <Contents> element, rendered once: a page is then a join of a slice,
        # so the server's own CPU does not cap how many pages it can answer at once
        self.fragments = [
            (
                f"<Contents><Key>{escape(k)}</Key><LastModified>{STAMP}</LastModified>"
                f'<ETag>"0"</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass>'
                "</Contents>"
            ).encode()
            for k in self.keys
        ]
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self) -> int:
        with self._lock:
            return self.requests

    def reset(self) -> None:
        with self._lock:
            self.requests = 0

    def page(self, query: dict[str, list[str]]) -> bytes:
        prefix = query.get("prefix", [""])[0]
        after = query.get("continuation-token", query.get("start-after", [""]))[0]
        limit = min(1000, int(query.get("max-keys", ["1000"])[0]))
        floor = max(after.encode(), prefix.encode()) if after else prefix.encode()
        start = (
            bisect.bisect_right(self.encoded, floor)
            if after
            else bisect.bisect_left(self.encoded, floor)
        )
        stop = start
        end = min(len(self.keys), start + limit)
        while stop < end and self.keys[stop].startswith(prefix):
            stop += 1
        truncated = stop < len(self.keys) and self.keys[stop].startswith(prefix)
        head = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(self.bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{stop - start}</KeyCount><MaxKeys>{limit}</MaxKeys>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
        )
        tail = ""
        if truncated and stop > start:
            tail = f"<NextContinuationToken>{escape(self.keys[stop - 1])}</NextContinuationToken>"
        tail += "</ListBucketResult>"
        return b"".join([head.encode(), *self.fragments[start:stop], tail.encode()])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the count is the log."""

    def do_GET(self) -> None:
        owner: ListServer = self.server.owner  # type: ignore[attr-defined]
        with owner._lock:
            owner.requests += 1
        time.sleep(owner.latency)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if "list-type" not in query:
            self.send_response(501)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = owner.page(query)
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
