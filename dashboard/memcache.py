"""The dashboard's caches that are not Streamlit's: an LRU bounded in bytes, and a cache by version. No streamlit.

``st.cache_resource`` bounds a cache by entries, but one head matrix of a 50,000-image
run is 51 MB in float16 and a toy run's is a few KB: only a cap in bytes keeps the
server's memory bounded whatever the run. ``ByteCache.get(key, load)`` returns the
cached value or calls ``load()`` once (concurrent callers of the same key wait for that
one load rather than reading the files again), then evicts the least recently used
entries until the total is under the cap. A value larger than the whole cap is
returned but not kept. Values are shared between threads: treat them as read-only.

The dashboard keeps one such cache per server for head matrices; its cap is
$CLIP_INTERPRET_CACHE_MB MiB (``capacity_from``, default 128).

``VersionedCache.get(key, version, build)`` keeps one value per key while its version
is unchanged and builds a new one when it changes: the SQL page's sandbox of a data
folder, rebuilt when the runs found on disk change (``dashboard.user_sql``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from precompute.errors import InputError

ENV_CACHE_MB = "CLIP_INTERPRET_CACHE_MB"
DEFAULT_CACHE_MB = 128


def capacity_from(environ: Mapping[str, str]) -> int:
    """Bytes the dashboard's matrix cache may hold: $CLIP_INTERPRET_CACHE_MB MiB, default 128; InputError if bad.

    One head of a 50,000-image run at D=512 is 51 MB in float16 (ids and norms included), so 128 MiB keeps
    the head on screen and one more, or a property vector (a 5,000-image run: 25 heads); an evicted head is
    read again from its Parquet files (0.15-0.3 s) the next time it is shown. The default leaves room for
    what a server holds anyway, measured at 50,000 images: ~1.1 GB of imported libraries (torch alone
    ~0.7 GB), ~0.7 GB for a loaded ViT-B-16 and ~0.4 GB of pages, thumbnails and allocator slack; after 30
    heads the server held 2.40 GB at 128 MiB, 2.47-2.61 GB at 256 and 2.8 GB at 512. Each 51 MB more keeps
    one more such head.
    """
    raw = environ.get(ENV_CACHE_MB, "").strip()
    if not raw:
        return DEFAULT_CACHE_MB * 2**20
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not mb >= 0:
        raise InputError(f"${ENV_CACHE_MB} is {raw!r}; set it to a number of MiB >= 0 (default {DEFAULT_CACHE_MB})")
    return int(mb * 2**20)


def nbytes(value: Any) -> int:
    """Bytes held by a value: ``.nbytes`` of an array or of an object that defines it, else a sum over a tuple."""
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    size = getattr(value, "nbytes", None)
    if size is not None:
        return int(size)
    if isinstance(value, (bytes, str)):
        return len(value)
    return 0 if value is None else int(np.asarray(value).nbytes)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    not_kept: int = 0  # values larger than the cap, returned but not stored


class ByteCache:
    """LRU of values whose sizes (``sizeof``, bytes) sum to at most ``capacity``; thread-safe."""

    def __init__(self, capacity: int, sizeof: Callable[[Any], int] = nbytes):
        if capacity < 0:
            raise ValueError(f"a cache capacity is a number of bytes >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()  # key -> (value, bytes), oldest first
        self._size = 0
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}  # key -> held while one thread loads it
        self.stats = CacheStats()

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._size

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> list:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def _lookup(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.stats.hits += 1
                return True, self._items[key][0]
            return False, None

    def peek(self, key: Hashable) -> Any:
        """The value of ``key`` if cached (counted as a hit), else None; never loads."""
        return self._lookup(key)[1]

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The value of ``key``, loaded by ``load()`` on a miss (once, however many threads ask at the same time)."""
        found, value = self._lookup(key)
        if found:
            return value
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            found, value = self._lookup(key)  # another thread may have loaded it while we waited
            if found:
                return value
            try:
                value = load()
                self.put(key, value)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self.stats.misses += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` and evict the least recently used entries beyond the cap (not kept if larger than it)."""
        size = self._sizeof(value)
        with self._lock:
            if key in self._items:
                self._size -= self._items.pop(key)[1]
            if size > self.capacity:
                self.stats.not_kept += 1
                return
            self._items[key] = (value, size)
            self._size += size
            while self._size > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self._size -= dropped
                self.stats.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


class VersionedCache:
    """One value per key, kept while the key's ``version`` compares equal and rebuilt when it changes; thread-safe.

    Builds run under one lock, so concurrent callers get the same value and a value is built once per version.
    """

    def __init__(self) -> None:
        self._items: dict[Hashable, tuple[Any, Any]] = {}  # key -> (version, value)
        self._lock = threading.Lock()

    def get(self, key: Hashable, version: Any, build: Callable[[], Any]) -> Any:
        with self._lock:
            cached = self._items.get(key)
            if cached is not None and cached[0] == version:
                return cached[1]
            value = build()
            self._items[key] = (version, value)
            return value
