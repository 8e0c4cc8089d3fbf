"""S3 full-pass listing in parallel key ranges, against moto through the product's client.

Pages are cut small (``page_size``) so that a few dozen objects make a listing long enough
to be split; each page is still one real request with ``start-after``, so the key order,
the ``start-after`` semantics and the byte order of odd names are moto's, not ours.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portfolio_sync.backends.storage import S3Storage
from tests.servers import CountingS3, S3Target

_examples = itertools.count()


def storage(target: S3Target, root: str, *, workers: int, page_size: int = 3) -> S3Storage:
    store = S3Storage(
        target.bucket,
        prefix=root,
        endpoint=target.endpoint,
        region=target.region,
        access_key_id=target.access_key,
        secret_access_key=target.secret_key,
    )
    store.page_size = page_size
    store.split_after = 1
    store.list_workers = workers
    return store


def folders(store: S3Storage) -> list[tuple[str, list[str]]]:
    return [(name, [o.path for o in objs]) for name, objs in store.iter_folders("")]


def expected(paths: list[str]) -> list[tuple[str, list[str]]]:
    """Grouped by first segment, in UTF-8 byte order, written apart from the product."""
    out: list[tuple[str, list[str]]] = []
    for path in sorted(paths, key=str.encode):
        name, sep, _ = path.partition("/")
        if not sep:
            continue
        if out and out[-1][0] == name:
            out[-1][1].append(path)
        else:
            out.append((name, [path]))
    return out


# no "/" inside names: obstore refuses keys with an empty segment ("1//a.jpg")
segment = st.text(alphabet=st.sampled_from(list("019 aZ-_.é😀~")), min_size=1, max_size=6)
folder = st.sampled_from(["1", "10", "100", "2", "1-x", "1.5", "ü", "a b", "😀", "9"])
paths = st.lists(
    st.tuples(folder, segment).map(lambda p: f"{p[0]}/{p[1]}.jpg"), min_size=0, max_size=40
)


@settings(
    max_examples=12,
    deadline=None,
    # every example lists its own root in the bucket: sharing the bucket is harmless
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(keys=paths, workers=st.integers(2, 6))
def test_parallel_listing_equals_the_sequential_one(
    s3_bucket: S3Target, keys: list[str], workers: int
) -> None:
    root = f"ex{next(_examples)}"
    keys = sorted(set(keys))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3_bucket.put(f"{root}/{k}", b"x"), keys))
    parallel = folders(storage(s3_bucket, root, workers=workers))
    sequential = folders(storage(s3_bucket, root, workers=1))
    assert parallel == sequential == expected(keys)


def test_a_short_listing_makes_exactly_the_sequential_requests(counting_s3: CountingS3) -> None:
    """Below `split_after` full pages nothing is split: one request per page, as before."""
    target = counting_s3.target
    for i in range(5):
        target.put(f"{i}/a.jpg", b"x")
    store = storage(target, "", workers=8, page_size=1000)
    store.split_after = 4
    counting_s3.reset()
    assert [name for name, _ in store.iter_folders("")] == ["0", "1", "2", "3", "4"]
    deadline = time.monotonic() + 5  # the proxy records a request after answering it
    while counting_s3.count() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # and a second request, if one were made, would show by now
    assert counting_s3.count("GET", "bucket") == 1, counting_s3.requests
