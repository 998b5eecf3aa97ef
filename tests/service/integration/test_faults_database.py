"""Faults of the database: PostgreSQL stopped mid-search for longer than the ingester's dead-letter
window (fault 3), and one worker cut off from the database while another takes its search over
(fault 6).

Each test owns an embedded PostgreSQL (`app.stack.embedded_postgres.EmbeddedPostgres`, restarted in a
fraction of a second on the same socket) besides the stack of test_faults.py, so these tests run in the
suite's first (SQLite) pass like the other fault tests. They assert what those do: every epoch stored
exactly once, the same per-epoch metrics and genotype as the shared uninterrupted reference run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.events.ingester import CONSUMER_GROUP, dead_letter_stream
from app.events.publisher import publish_epoch
from app.stack.embedded_postgres import EmbeddedPostgres

from .conftest import WorkerProcess, wait_until
from .live_server import CuttingProxy
from .test_faults import (
    FAULT_LEASE_SECONDS,
    FaultStack,
    _stack,
    assert_same_as_reference,
    reference_run,
    start_worker,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# The dead-letter window, shortened: an entry the database refuses is claimed again after 0.5 s and
# dead-lettered after its second redelivery (a few seconds). The outages below last longer.
INGESTER_OPTIONS = {"claim_idle_ms": 500, "max_deliveries": 2}
LONG_LEASE_SECONDS = 120.0


@pytest.fixture
def reference() -> list[dict[str, Any]]:
    return reference_run()


@pytest.fixture
def postgres() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's tmp dir: as root the server runs as another user, who must pass through every
    # directory above its data (see tests/service/conftest.py); a short path keeps the socket in it, so
    # the URL stays the same across restarts.
    root = Path(tempfile.mkdtemp(prefix="darts-faults-pg-"))
    server = EmbeddedPostgres(root / "data", durable=False).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_stack(tmp_path: Path, postgres: EmbeddedPostgres) -> Iterator[FaultStack]:
    yield from _stack(tmp_path, run_ingester=True, database_url=postgres.url,
                      ingester_options=INGESTER_OPTIONS)


@pytest.fixture
def pg_stack_long_lease(tmp_path: Path, postgres: EmbeddedPostgres) -> Iterator[FaultStack]:
    """A lease far longer than the outage: the worker trains on through it, publishing epochs."""
    yield from _stack(tmp_path, run_ingester=True, database_url=postgres.url,
                      ingester_options=INGESTER_OPTIONS, lease_seconds=LONG_LEASE_SECONDS)


def most_deliveries(stack: FaultStack) -> int:
    """The highest delivery count of an entry pending in the ingesters' group (0 when none is)."""
    client = redis.Redis.from_url(stack.settings.redis_url or "")
    try:
        pending = client.xpending_range(stack.settings.events_stream, CONSUMER_GROUP, min="-", max="+",
                                        count=100)
    finally:
        client.close()
    return max((int(entry["times_delivered"]) for entry in pending), default=0)


def dead_lettered(stack: FaultStack) -> int:
    client = redis.Redis.from_url(stack.settings.redis_url or "")
    try:
        return int(client.xlen(dead_letter_stream(stack.settings)))
    finally:
        client.close()


def test_postgres_stopped_longer_than_the_dead_letter_window_loses_nothing(
    pg_stack_long_lease: FaultStack, postgres: EmbeddedPostgres, tmp_path: Path,
    reference: list[dict[str, Any]],
) -> None:
    stack = pg_stack_long_lease
    assert stack.ingester is not None
    worker = start_worker(stack, tmp_path)
    search_id = stack.submit()
    stack.wait_epoch(search_id, 1)
    postgres.stop()
    stopped_at = time.monotonic()
    # The worker trains on and publishes epochs the ingester cannot store: they stay pending,
    # delivered again and again, well past the number of deliveries that dead-letters a refused entry.
    wait_until(lambda: most_deliveries(stack) > 2 * INGESTER_OPTIONS["max_deliveries"], 120,
               "an entry pending past the dead-letter window")
    postgres.start()
    outage = time.monotonic() - stopped_at
    restarted_at = time.monotonic()
    wait_until(lambda: most_deliveries(stack) == 0, 60, "the pending entries to be stored")
    print(f"\nPostgreSQL down {outage:.1f} s; pending events stored "
          f"{time.monotonic() - restarted_at:.1f} s after it was started again")
    final = stack.wait_finished(search_id)
    assert_same_as_reference(stack, search_id, reference)
    assert final.attempts == 1  # the outage did not even cost the run its lease
    assert dead_lettered(stack) == 0
    assert stack.ingester.ingester.stats.dead_lettered == 0
    # Every part lived through it: the worker process, the ingester thread, the API.
    assert worker.alive
    assert stack.ingester.alive
    assert stack.api.get(f"/searches/{search_id}").status_code == 200


def test_a_worker_cut_off_from_the_database_stops_and_another_resumes_one_history(
    pg_stack: FaultStack, postgres: EmbeddedPostgres, tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    stack = pg_stack
    assert stack.ingester is not None
    # Cut with close(): open connections closed and new ones refused, as when the worker's host loses
    # its route to the database.
    proxy = CuttingProxy(str(postgres.socket_dir / ".s.PGSQL.5432"))
    try:
        cut_env = {**stack.env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{proxy.port}/darts"}
        log_dir = tmp_path / "cut-worker"
        log_dir.mkdir()
        cut_worker = WorkerProcess(cut_env, log_dir).start()
        stack.workers.append(cut_worker)
        search_id = stack.submit()
        stack.wait_epoch(search_id, 1)
        assert stack.worker_holding(search_id) is cut_worker
        other = start_worker(stack, tmp_path)
        proxy.close()
        cut_at = time.monotonic()
        wait_until(lambda: "not renewed" in cut_worker.log(), 60, "the cut-off worker to stop its run")
        stopped = time.monotonic() - cut_at
        wait_until(
            lambda: (row := stack.row(search_id)).attempts == 2 and row.status == "running"
            and row.lease_owner,
            120,
            "the other worker to take the search over",
            interval=0.05,
        )
        assert stack.worker_holding(search_id) is other
        print(f"\nworker cut off from the database: it stopped its run {stopped:.1f} s after the cut; "
              f"the other worker ran the search {time.monotonic() - cut_at:.1f} s after the cut "
              f"(lease {FAULT_LEASE_SECONDS} s)")
        # A late event of the superseded attempt (as a cut-off run still reaching Redis would send) is
        # discarded: it never reaches the search's history.
        client = redis.Redis.from_url(stack.settings.redis_url or "", decode_responses=True)
        try:
            late = {**reference[-1], "train_loss": 123.0}
            publish_epoch(client, stack.settings, search_id, late, attempt=1)
        finally:
            client.close()
        ingester = stack.ingester.ingester
        wait_until(lambda: ingester.stats.fenced >= 1, 60, "the stale attempt's event to be discarded")
        stack.wait_finished(search_id)
        assert_same_as_reference(stack, search_id, reference)
        assert stack.row(search_id).attempts == 2
        assert cut_worker.alive  # it stopped its run, not itself
    finally:
        proxy.close()
