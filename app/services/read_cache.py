"""Short-lived answers for the reads clients poll: a search or training and its epoch pages, and API keys.

Why (issue 10's load). A client following a job polls `GET /searches/{id}` and its epochs back to back,
and a hundred of them made the API spend its time handing each request between the event loop and the
thread pool (three sync dependencies and a route, each a hop, all fighting over the GIL) and reading
the same rows from SQL thousands of times a second. Answers kept for a fraction of a second serve
those polls on the event loop, without a thread or a connection: SQL is read at most once per
`ttl` per key and API process, however many clients poll, plus once per announced change of a key
read since it was last built (`renew`).

How fresh an answer is: at most `ttl` seconds older than the database (READ_CACHE_SECONDS, default
0.1 s); a write made through the API (cancel, delete) and every event the ingester stores drop what is
kept about their job at once (app.routes.polled, app.events.changes). With `ttl` 0 nothing is kept.
What is kept is what was built within the last `ttl` (expired entries go on the next insert), at most
`max_entries` of it and, with a `weigh`, at most `max_weight` (e.g. bytes) of it: any page of epochs a
client asks for is kept (one can be megabytes), so the bound is on the size, not only the count.

While one request builds a key's answer, the others asking for it wait for that one build instead of
starting their own (one SQL read per key at a time). A build that fails (404, a database error) is
not kept: each waiting request gets the same error, and the next request tries again.

Renewed, not dropped, when another process changed the job (`renew`, called by the change listener).
Dropping the answer sent the next poll through the framework to rebuild it, and under 100 pollers
every `await` on that path waited a turn of an event loop with a hundred requests ready: an epoch
showed 70 ms after it was stored at p50, 280 ms at p99. Instead the kept answer's own rebuild runs in
the background (`renew_in`, a thread outside the event loop) while polls go on getting the answer
before the change, and the new one replaces it as soon as it is built.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

V = TypeVar("V")
logger = logging.getLogger(__name__)


@dataclass
class _Entry(Generic[V]):
    value: V
    expires: float
    rebuild: Callable[[], V] | None = None  # builds the value again outside the event loop (`renew`)
    read: bool = False  # asked for since it was built: only such a value is worth renewing
    weight: int = 0  # its `weigh` (0 without one)


class ReadCache(Generic[V]):
    """Values by key for `ttl` seconds from their build, at most `max_entries` of them and at most
    `max_weight` of their `weigh(value)` together (oldest dropped; a value heavier than `max_weight`
    alone is answered but not kept).

    `get` runs on the event loop; `invalidate` may be called from any thread (sync routes run in the
    thread pool). A build that began before an invalidation of its key is answered to the requests that
    waited for it but not kept, and requests arriving after the invalidation start a build of their own:
    a write is never hidden by a read that was already under way.
    """

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        renew_in: Callable[[Callable[[], None]], object] | None = None,
        weigh: Callable[[V], int] | None = None,
        max_weight: int | None = None,
    ):
        """`renew_in(work)` runs `work` in the background for `renew` (e.g. an executor's `submit`);
        without it `renew` drops what it matches, as `invalidate` does. `weigh` and `max_weight` go
        together (a value's size, e.g. its bytes, and the most of it kept at once)."""
        if ttl < 0:
            raise ValueError(f"ttl must be at least 0, got {ttl}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if (weigh is None) != (max_weight is None):
            raise ValueError("weigh and max_weight go together: pass both or neither")
        if max_weight is not None and max_weight < 0:
            raise ValueError(f"max_weight must be at least 0, got {max_weight}")
        self.ttl = ttl
        self.max_entries = max_entries
        self._weigh = weigh
        self.max_weight = max_weight
        self.weight = 0  # the weight of what is kept now
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        # Builds under way; an invalidation removes its keys' builds, which then answer but do not keep.
        self._building: dict[Hashable, asyncio.Future[V]] = {}
        # Renewals under way, by key: a renewal keeps its value only while it is still the key's latest.
        self._renewing: dict[Hashable, object] = {}
        self._renew_in = renew_in
        self.builds = 0  # how many times a value was built (for tests and figures)
        self.renewals = 0  # how many renewals were kept

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: Hashable) -> V | None:
        """The kept value of `key` while it is fresh, else None (nothing is built)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires > self._clock():
                entry.read = True
                return entry.value
        return None

    async def get(
        self,
        key: Hashable,
        build: Callable[[], Awaitable[V]],
        rebuild: Callable[[], V] | None = None,
    ) -> V:
        """The value of `key`: kept, being built by another request, or built now by `build()`.

        `rebuild()`, if given, builds the same value synchronously in any thread: `renew` uses it.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires > self._clock():
                entry.read = True
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
                return await self.get(key, build, rebuild)  # the building request was cancelled: build here
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
            if current:
                self._keep(key, value, rebuild)
        future.set_result(value)
        return value

    def _keep(self, key: Hashable, value: V, rebuild: Callable[[], V] | None) -> None:
        """Keep `value` for `ttl` from now (the lock held)."""
        if self.ttl <= 0:
            return
        weight = 0 if self._weigh is None else self._weigh(value)
        self._remove(key)
        if self.max_weight is not None and weight > self.max_weight:
            return  # too heavy to keep at all
        now = self._clock()
        self._entries[key] = _Entry(value, now + self.ttl, rebuild, weight=weight)
        self.weight += weight
        self._drop_expired(now)
        while len(self._entries) > self.max_entries or (
            self.max_weight is not None and self.weight > self.max_weight
        ):
            self._remove(next(iter(self._entries)))

    def _remove(self, key: Hashable) -> None:
        """Forget the kept value of `key`, if any (the lock held)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.weight -= entry.weight

    def _drop_expired(self, now: float) -> None:
        # Entries live `ttl` from their build or renewal, and either puts them at the end, so the front
        # holds the oldest: what is kept is what was built within the last `ttl`, not the most
        # `max_entries` ever built (an epoch page can be megabytes).
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if oldest.expires > now:
                return
            self._remove(key)

    def invalidate(self, match: Callable[[Hashable], bool]) -> None:
        """Forget every key for which `match(key)` is true, kept, being built or being renewed (any
        thread): the next `get` builds it again. For a change whose writer reads next (read your writes)."""
        with self._lock:
            for key in [key for key in self._entries if match(key)]:
                self._remove(key)
            self._forget_builds(match)

    def _forget_builds(self, match: Callable[[Hashable], bool]) -> None:
        """Builds and renewals of matching keys under way will answer but not keep (the lock held)."""
        for key in [key for key in self._building if match(key)]:
            del self._building[key]
        for key in [key for key in self._renewing if match(key)]:
            del self._renewing[key]

    def renew(self, match: Callable[[Hashable], bool]) -> None:
        """Build every fresh kept value for which `match(key)` is true again, in the background (any thread).

        Until its renewal is built, a key keeps answering the value it had (at most `ttl` old, as ever);
        then the new value is kept for `ttl`. A key nobody asked for since it was built, kept without a
        `rebuild`, or any key without `renew_in`, is forgotten as by `invalidate` (renewing what nobody
        reads would read SQL at every change for nothing); so is one whose rebuild fails. Builds of
        matching keys already under way when this is called, begun before the change, answer but do
        not keep; so do renewals queued or under way (a queued one that a later one replaced is skipped).
        """
        renewals: list[tuple[Hashable, object, Callable[[], V]]] = []
        with self._lock:
            now = self._clock()
            for key in [key for key in self._entries if match(key)]:
                entry = self._entries[key]
                if not entry.read or entry.rebuild is None or self._renew_in is None or entry.expires <= now:
                    self._remove(key)
                else:
                    renewals.append((key, object(), entry.rebuild))
            self._forget_builds(match)
            for key, token, _rebuild in renewals:
                self._renewing[key] = token
        for key, token, rebuild in renewals:
            assert self._renew_in is not None
            self._renew_in(partial(self._renew_one, key, token, rebuild))

    def _renew_one(self, key: Hashable, token: object, rebuild: Callable[[], V]) -> None:
        with self._lock:
            if self._renewing.get(key) is not token:
                return  # replaced by a later renewal (which reads after this one would) or invalidated
        try:
            value = rebuild()
        except Exception:  # noqa: BLE001 - the next `get` builds it again and meets the error itself
            logger.debug("renewal of %r failed; forgotten", key, exc_info=True)
            with self._lock:
                if self._renewing.get(key) is token:
                    del self._renewing[key]
                    self._remove(key)
            return
        with self._lock:
            if self._renewing.get(key) is not token:
                return  # invalidated or renewed again meanwhile: that one decides
            del self._renewing[key]
            self.renewals += 1
            self._keep(key, value, rebuild)

    def clear(self) -> None:
        self.invalidate(lambda _key: True)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
