"""Short-lived answers for the reads clients poll: a search or training and its epoch pages, and API keys.

Why (issue 10's load). A client following a job polls `GET /searches/{id}` and its epochs back to back,
and a hundred of them made the API spend its time handing each request between the event loop and the
thread pool (three sync dependencies and a route, each a hop, all fighting over the GIL) and reading
the same rows from SQL thousands of times a second. Answers kept for a fraction of a second serve
those polls on the event loop, without a thread or a connection: SQL is read at most once per
`ttl` per key and API process, however many clients poll.

How fresh an answer is: at most `ttl` seconds older than the database (READ_CACHE_SECONDS, default
0.1 s); a write made through the API (cancel, delete) and every event the ingester stores drop what is
kept about their job at once (app.routes.polled, app.events.changes). With `ttl` 0 nothing is kept.
What is kept is what was built within the last `ttl` (expired entries go on the next insert), at most
`max_entries` of it.

While one request builds a key's answer, the others asking for it wait for that one build instead of
starting their own (one SQL read per key at a time). A build that fails (404, a database error) is
not kept: each waiting request gets the same error, and the next request tries again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    expires: float


class ReadCache(Generic[V]):
    """Values by key for `ttl` seconds from their build, at most `max_entries` of them (oldest dropped).

    `get` runs on the event loop; `invalidate` may be called from any thread (sync routes run in the
    thread pool). A build that began before an invalidation of its key is answered to the requests that
    waited for it but not kept, and requests arriving after the invalidation start a build of their own:
    a write is never hidden by a read that was already under way.
    """

    def __init__(self, ttl: float, *, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic):
        if ttl < 0:
            raise ValueError(f"ttl must be at least 0, got {ttl}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        # Builds under way; an invalidation removes its keys' builds, which then answer but do not keep.
        self._building: dict[Hashable, asyncio.Future[V]] = {}
        self.builds = 0  # how many times a value was built (for tests and figures)

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: Hashable) -> V | None:
        """The kept value of `key` while it is fresh, else None (nothing is built)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires > self._clock():
                return entry.value
        return None

    async def get(self, key: Hashable, build: Callable[[], Awaitable[V]]) -> V:
        """The value of `key`: kept, being built by another request, or built now by `build()`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires > self._clock():
                return entry.value
            pending = self._building.get(key)
            if pending is None:
                future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
                self._building[key] = future
        if pending is not None:
            try:
                # shield: a waiter that is cancelled (its client went away) does not cancel the build.
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled() or _being_cancelled():
                    raise
                return await self.get(key, build)  # the building request was cancelled: build here
        try:
            value = await build()
        except BaseException as exc:
            with self._lock:
                if self._building.get(key) is future:
                    del self._building[key]
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        with self._lock:
            self.builds += 1
            current = self._building.get(key) is future  # not invalidated while it was built
            if current:
                del self._building[key]
            if self.ttl > 0 and current:
                now = self._clock()
                self._entries[key] = _Entry(value, now + self.ttl)
                self._entries.move_to_end(key)
                self._drop_expired(now)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        future.set_result(value)
        return value

    def _drop_expired(self, now: float) -> None:
        # Entries live `ttl` from their build and are never renewed, so the least recently used end also
        # holds the oldest builds: what is kept is what was built within the last `ttl`, not the most
        # `max_entries` ever built (an epoch page can be megabytes).
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires > now:
                return
            self._entries.popitem(last=False)

    def invalidate(self, match: Callable[[Hashable], bool]) -> None:
        """Forget every key for which `match(key)` is true, kept or being built (any thread)."""
        with self._lock:
            for key in [key for key in self._entries if match(key)]:
                del self._entries[key]
            for key in [key for key in self._building if match(key)]:
                del self._building[key]

    def clear(self) -> None:
        self.invalidate(lambda _key: True)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
