"""Reliability: the lease against duplicate deliveries, the attempts cap, a killed worker's search
resuming from its checkpoint, and an ingester that stores every event once whatever is delivered."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections import defaultdict

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.events.ingester import CONSUMER_GROUP, Ingester
from app.events.publisher import publish
from app.events.schema import EpochEvent, StatusEvent
from app.models import Search, SearchEpoch
from app.queue import create_celery_app, enqueue_search
from app.settings import Settings
from app.storage import search_dir
from worker.search_run import SearchRun

from .conftest import (
    REPO_ROOT,
    finish,
    get_search,
    submit,
    tiny_spec,
    wait_for_status,
    wait_until,
)
from .test_search_flow import stream_events


def _row(factory: sessionmaker[Session], search_id: str) -> Search:
    with factory() as session:
        return session.get(Search, search_id)


def test_a_duplicate_task_does_not_run_a_leased_search(
    api: TestClient, running_worker, stack_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    search_id = submit(api, tiny_spec(epochs=200, name="leased"))["id"]
    try:
        wait_until(lambda: get_search(api, search_id)["epoch"] >= 1, 120, "the first epoch")
        leased = _row(session_factory, search_id)
        assert leased.lease_owner and leased.attempts == 1

        # A second copy of the task, as the broker redelivers it, finds the live lease and does nothing.
        assert SearchRun(stack_settings, search_id).execute() == "duplicate"
        # And one more copy through the broker: it waits behind the running search, then must not
        # start it again either.
        enqueue_search(create_celery_app(stack_settings), search_id, stack_settings)
        after = _row(session_factory, search_id)
        assert after.lease_owner == leased.lease_owner and after.attempts == 1
    finally:
        finish(api, search_id)
    wait_until(lambda: _queue_length(stack_settings) == 0, 30, "the worker to take the duplicate task")
    events = stream_events(stack_settings, search_id)
    statuses = [event.status for _, event in events if event.type == "status"]
    assert statuses.count("running") == 1, statuses
    assert _row(session_factory, search_id).attempts == 1


def test_attempts_are_capped(
    api: TestClient,
    running_worker,
    stack_settings: Settings,
    session_factory: sessionmaker[Session],
    api_owner: str,
) -> None:
    search_id = str(uuid.uuid4())
    with session_factory() as session, session.begin():
        session.add(
            Search(
                id=search_id,
                name="crashed too often",
                owner=api_owner,
                status="running",
                spec=tiny_spec(epochs=1),
                dataset_ref="builtin:synthetic",
                epochs=1,
                attempts=stack_settings.search_max_attempts,
            )
        )
    enqueue_search(create_celery_app(stack_settings), search_id, stack_settings)
    final = wait_for_status(api, search_id, {"failed", "succeeded"}, timeout=60)
    assert final["status"] == "failed"
    assert f"gave up after {stack_settings.search_max_attempts} attempts" in final["error"]
    assert final["epoch"] == 0


@pytest.mark.slow
def test_a_killed_worker_s_search_resumes_from_its_checkpoint(
    api: TestClient, worker, stack_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    worker.ensure_running()
    epochs = 8
    search_id = submit(api, tiny_spec(epochs=epochs, samples=512, name="survives a crash"))["id"]
    try:
        wait_until(lambda: get_search(api, search_id)["epoch"] >= 2, 180, "two epochs")
        worker.kill()
        killed_at_epoch = get_search(api, search_id)["epoch"]
        assert killed_at_epoch < epochs, "the search finished before the worker could be killed"
        assert (search_dir(stack_settings, search_id) / "checkpoint.pt").exists()
        assert get_search(api, search_id)["status"] == "running"  # nobody knows yet

        worker.start()
        # The lease expires (LEASE_SECONDS), the ingester's sweep requeues the search, the new worker
        # resumes it.
        final = wait_for_status(api, search_id, {"succeeded", "failed", "cancelled"}, timeout=180)
    finally:
        finish(api, search_id)
    assert final["status"] == "succeeded", final["error"]
    assert final["epoch"] == epochs
    records = api.get(f"/searches/{search_id}/epochs").json()["items"]
    assert [record["epoch"] for record in records] == list(range(1, epochs + 1))
    assert _row(session_factory, search_id).attempts == 2

    events = stream_events(stack_settings, search_id)
    statuses = [event.status for _, event in events if event.type == "status"]
    # The sweep hands the search back in SQL (no event); the second attempt reports `running` again.
    assert statuses == ["running", "running", "succeeded"], statuses
    attempts = [event.attempt for _, event in events if event.type == "status"]
    assert attempts == [1, 2, 2], attempts
    # Resumed, not restarted: an epoch finished before the crash is never computed again (it may be
    # reported again from the checkpoint, with the very same numbers).
    runs_of_epoch: dict[int, set[float]] = defaultdict(set)
    for _, event in events:
        if event.type == "epoch":
            runs_of_epoch[event.epoch].add(event.seconds)
    assert all(len(runs) == 1 for runs in runs_of_epoch.values()), dict(runs_of_epoch)


def _queue_length(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return client.llen(f"{settings.redis_prefix}:celery:{settings.celery_queue}")
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------------
# The ingester on its own stream (its own key prefix), driven one round at a time
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def own_stream(stack_settings: Settings) -> Settings:
    settings = stack_settings.model_copy(update={"redis_prefix": f"{stack_settings.redis_prefix}-ingest"})
    yield settings
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _epoch_event(search_id: str, epoch: int, valid_acc: float) -> EpochEvent:
    genotype = {"normal": [["skip_connect", 0]], "normal_concat": [2], "reduce": [["max_pool_3x3", 1]],
                "reduce_concat": [2]}
    return EpochEvent(
        search_id=search_id, epoch=epoch, train_loss=1.0, train_acc=0.5, valid_loss=1.0,
        valid_acc=valid_acc, lr=0.01, seconds=0.5, genotype=genotype,
        alphas={"normal": [[0.5, 0.5]], "reduce": [[0.5, 0.5]]},
    )


def _drain(ingester: Ingester, rounds: int = 5) -> None:
    for _ in range(rounds):
        ingester.run_once()


def test_the_ingester_stores_each_event_once(own_stream: Settings, db_session: Session) -> None:
    search_id = str(uuid.uuid4())
    db_session.add(
        Search(
            id=search_id, name="ingested", owner="tester", status="queued", spec={}, dataset_ref="builtin:x",
            epochs=2,
        )
    )
    db_session.commit()
    client = redis.Redis.from_url(own_stream.redis_url, decode_responses=True)
    ingester = Ingester(own_stream, block_ms=50, claim_idle_ms=200, sweep_interval=float("inf"))
    ingester.ensure_group()
    try:
        first = _epoch_event(search_id, 1, valid_acc=0.5)
        publish(client, own_stream, StatusEvent(search_id=search_id, status="running"))
        publish(client, own_stream, first)
        publish(client, own_stream, first)  # the same event delivered twice
        publish(client, own_stream, _epoch_event(search_id, 1, valid_acc=0.9))  # a re-run of epoch 1
        client.xadd(own_stream.events_stream, {"data": "{not json"})
        client.xadd(own_stream.events_stream, {"something": "else"})
        client.xadd(own_stream.events_stream, {"data": '{"type": "epoch", "search_id": "x"}'})
        _drain(ingester)

        # A consumer that read epoch 2 and died before acking it: the ingester claims it once idle.
        publish(client, own_stream, _epoch_event(search_id, 2, valid_acc=0.7))
        client.xreadgroup(CONSUMER_GROUP, "dead-consumer", {own_stream.events_stream: ">"}, count=1)
        wait_until(lambda: ingester.run_once() or ingester.stats.claimed, 10, "the dead consumer's entry")
        # Late and repeated status events never move a finished search back.
        publish(client, own_stream, StatusEvent(search_id=search_id, status="succeeded"))
        publish(client, own_stream, StatusEvent(search_id=search_id, status="running"))
        publish(client, own_stream, StatusEvent(search_id=search_id, status="failed", error="late"))
        # An event of a search that does not exist is dropped, not retried forever.
        publish(client, own_stream, StatusEvent(search_id=str(uuid.uuid4()), status="running"))
        _drain(ingester)

        pending = client.xpending(own_stream.events_stream, CONSUMER_GROUP)
        assert pending["pending"] == 0
        assert ingester.stats.malformed == 3
        assert int(client.get(f"{own_stream.events_stream}:malformed")) == 3
        assert ingester.stats.claimed == 1
        assert ingester.stats.orphans == 1

        db_session.expire_all()
        rows = db_session.scalars(
            select(SearchEpoch).where(SearchEpoch.search_id == search_id).order_by(SearchEpoch.epoch)
        ).all()
        assert [(row.epoch, row.valid_acc) for row in rows] == [(1, 0.5), (2, 0.7)]  # the first epoch 1 wins
        search = db_session.get(Search, search_id)
        assert search.status == "succeeded" and search.error is None
        assert search.epoch == 2 and search.best_valid_acc == 0.7
        assert search.started_at is not None and search.finished_at is not None
    finally:
        ingester.close()
        client.close()


def test_the_ingester_runs_as_its_own_process(
    own_stream: Settings, stack_env: dict[str, str], db_session: Session
) -> None:
    """`darts-service ingest`: a second consumer beside the API's, stopped cleanly by SIGTERM."""
    search_id = str(uuid.uuid4())
    db_session.add(
        Search(id=search_id, name="own", owner="tester", status="queued", spec={}, dataset_ref="x", epochs=1)
    )
    db_session.commit()
    env = {**stack_env, "REDIS_PREFIX": own_stream.redis_prefix}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "ingest"], env=env, cwd=REPO_ROOT)
    client = redis.Redis.from_url(own_stream.redis_url, decode_responses=True)
    try:
        publish(client, own_stream, StatusEvent(search_id=search_id, status="running"))
        publish(client, own_stream, _epoch_event(search_id, 1, valid_acc=0.6))
        publish(client, own_stream, StatusEvent(search_id=search_id, status="succeeded"))

        def stored() -> bool:
            db_session.expire_all()
            return db_session.get(Search, search_id).status == "succeeded"

        wait_until(stored, 60, "the ingester process to store the events")
        search = db_session.get(Search, search_id)
        assert search.epoch == 1 and search.best_valid_acc == 0.6
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        client.close()
