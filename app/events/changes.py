"""Announcements that a job's rows changed: the ingester publishes the job's id on a Redis channel
once an event of it is stored (and the sweep, once it requeued or cancelled it), and each API process
renews what its read cache keeps about that job (app.services.read_cache) and wakes the job's event
streams, so a new epoch shows in the next poll instead of after READ_CACHE_SECONDS.

A write through an API process (a cancel, a delete) is announced as `written`: the other API processes
then drop what they keep instead of renewing it, so that none of them answers the state before the
write once the writer has its answer (a renewal would serve it until rebuilt).

Best effort on both sides: Pub/Sub keeps nothing for a listener that is away, so an announcement lost
(Redis down, a listener reconnecting) only leaves the kept answer to expire, READ_CACHE_SECONDS at most.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from app.settings import Settings

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)
POLL_SECONDS = 0.5  # how long one wait for a message lasts: the most a stopped listener lingers


def changes_channel(settings: Settings) -> str:
    return f"{settings.redis_prefix}:changed"


WRITTEN = " written"  # the suffix of an announcement of a write through the API


def announce_change(client: redis.Redis, settings: Settings, job_id: str, *, written: bool = False) -> None:
    """Tell the API processes that `job_id`'s rows changed, `written` through an API process (never
    raises: the cache expires anyway)."""
    try:
        client.publish(changes_channel(settings), job_id + WRITTEN if written else job_id)
    except redis.RedisError as exc:
        logger.debug("could not announce a change of %s: %s", job_id, exc)


class ChangeListener:
    """A thread that calls `on_change(job_id, written)` for every announcement, reconnecting after errors."""

    def __init__(
        self, client: redis.Redis, settings: Settings, on_change: Callable[[str, bool], None]
    ) -> None:
        self.client = client
        self.channel = changes_channel(settings)
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="change-listener", daemon=True)
        self.received = 0
        self.reconnects = 0

    def start(self) -> ChangeListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to end (within one `POLL_SECONDS`); not waited for: it holds nothing."""
        self._stop.set()

    def _listen(self) -> None:
        failures = 0
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                if failures:
                    logger.info("change listener subscribed again after %d failed attempt(s)", failures)
                failures = 0
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=POLL_SECONDS)
                    if message is not None and message["type"] == "message":
                        data = message["data"]
                        self._act_on(data.decode() if isinstance(data, bytes) else str(data))
                        self.received += 1  # counted once acted on (a renewal may still be under way)
            except Exception as exc:  # noqa: BLE001 - whatever it was, listen again: this thread must not die
                if self._stop.is_set():
                    return  # the app closed its Redis client on the way out
                wait = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                if failures == 0:  # once per outage; kept answers expire meanwhile
                    logger.warning("change listener lost Redis (%s: %s); retrying", type(exc).__name__, exc)
                failures += 1
                self.reconnects += 1
                self._stop.wait(wait)
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - a connection that is already gone
                    pass

    def _act_on(self, message: str) -> None:
        written = message.endswith(WRITTEN)
        job_id = message.removesuffix(WRITTEN)
        try:
            self.on_change(job_id, written)
        except Exception:  # not Redis's fault: keep listening without reconnecting
            logger.exception("acting on the change of %s failed", job_id)
