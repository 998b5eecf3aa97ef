"""worker.job_run: a run's outbox, and how a run whose epochs cannot be published or whose training
diverges ends (failed with its reason, never retried forever), over the real migrated database and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from sqlalchemy.orm import Session

from app.events.schema import StatusEvent, parse_event
from app.logging_config import clear_log_context
from app.models import Training
from app.settings import Settings
from darts_core.spec.genotype import Genotype
from worker.job_run import JobOutcome, Outbox, StopWatch, UnpublishableEvent
from worker.training_run import TrainingRun

from .conftest import epoch_genotype


@pytest.fixture(autouse=True)
def _no_log_context_left_behind() -> Any:
    """A run binds its attempt to the log context of the thread it runs in (a Celery task clears it
    afterwards, worker.logs); these tests run it in the test thread, so they clear it themselves."""
    yield
    clear_log_context()


def test_the_outbox_keeps_records_redis_refused_and_drops_an_invalid_one() -> None:
    sent: list[int] = []
    redis_away = True

    def send(record: dict[str, Any]) -> str:
        if redis_away:
            raise redis.ConnectionError("away")
        if record["epoch"] == 2:
            raise ValueError("train_loss is None")
        sent.append(record["epoch"])
        return "0-1"

    outbox = Outbox(send)
    outbox.put({"epoch": 1})
    outbox.put({"epoch": 2})
    outbox.put({"epoch": 3})
    assert sent == [] and len(outbox) == 3  # Redis away: they wait, in order
    redis_away = False
    # Epoch 1 goes out; epoch 2 can never be sent, so it is dropped and the run told; 3 still waits.
    with pytest.raises(UnpublishableEvent, match="epoch 2 could not be published: ValueError"):
        outbox.flush()
    assert sent == [1] and len(outbox) == 1
    assert outbox.flush() and sent == [1, 3]


def _training(session: Session, spec: dict[str, Any], genotype: dict[str, Any] | None = None) -> str:
    training_id = str(uuid.uuid4())
    session.add(
        Training(
            id=training_id, name="diverges", owner="tester", status="queued", spec=spec,
            dataset_ref="builtin:synthetic", epochs=spec["training"]["epochs"],
            genotype=genotype or epoch_genotype(1),
        )
    )
    session.commit()
    return training_id


def _statuses(settings: Settings, job_id: str) -> list[StatusEvent]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        entries = client.xrange(settings.events_stream)
    finally:
        client.close()
    events = [parse_event(fields["data"]) for _, fields in entries]
    return [event for event in events if event.job_id == job_id and isinstance(event, StatusEvent)]


SPEC: dict[str, Any] = {
    "dataset": {"name": "synthetic", "num_samples": 64, "image_size": 8, "num_classes": 2, "channels": 1},
    "network": {"init_channels": 4, "cells": 3},
    "training": {"epochs": 2, "batch_size": 16},
    "resources": {"device": "cpu"},
}


class _ReportsAnInvalidEpoch(TrainingRun):
    """A run whose loop reports an epoch the event schema refuses (a metric that is not a number)."""

    def run_job(self, watch: StopWatch, report: Callable[[dict[str, Any]], None]) -> JobOutcome | None:
        report({"epoch": 1, "train_loss": None, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5,
                "lr": 0.1, "drop_path_prob": 0.0, "seconds": 1.0})
        return JobOutcome(stopped=False, epochs_completed=1)


def test_an_epoch_that_cannot_be_published_fails_the_run(
    service_settings: Settings, db_session: Session
) -> None:
    training_id = _training(db_session, SPEC)
    assert _ReportsAnInvalidEpoch(service_settings, training_id).execute() == "failed"
    statuses = _statuses(service_settings, training_id)
    assert [event.status for event in statuses] == ["running", "failed"]
    assert "epoch 1 could not be published" in (statuses[-1].error or "")


def test_a_diverging_training_fails_with_the_epoch_it_diverged_at(
    service_settings: Settings, db_session: Session
) -> None:
    # The data, network and genotype of tests/core's diverging training: NaN in the first epoch.
    spec = {
        "dataset": {"name": "synthetic", "num_samples": 120, "channels": 3, "image_size": 8, "num_classes": 4,
                    "noise": 0.3, "seed": 1},
        "network": {"init_channels": 4, "cells": 3},
        "training": {"epochs": 2, "batch_size": 16, "lr": 10.0, "momentum": 0.99, "weight_decay": 0.0,
                     "grad_clip": None},
        "resources": {"device": "cpu"},
    }
    genotype = Genotype(
        normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("avg_pool_3x3", 0)],
        reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1)],
    )
    training_id = _training(db_session, spec, genotype.to_json())
    assert TrainingRun(service_settings, training_id).execute() == "failed"
    statuses = _statuses(service_settings, training_id)
    assert [event.status for event in statuses] == ["running", "failed"]
    assert "training diverged at epoch 1: non-finite loss" in (statuses[-1].error or "")


def test_every_job_kind_s_task_is_acked_late_and_retried_while_the_stores_are_down() -> None:
    """The search and training tasks share their options (worker.task_options): a job is acked only
    once it has run, and the database or Redis unreachable before it starts is retried, never dropped."""
    import redis
    from sqlalchemy.exc import SQLAlchemyError

    from worker.search_task import run_search_task
    from worker.training_task import run_training_task

    for task in (run_search_task, run_training_task):
        assert (task.acks_late, task.ignore_result, task.max_retries) == (True, True, None), task.name
        assert set(task.autoretry_for) == {SQLAlchemyError, redis.ConnectionError, redis.TimeoutError}


def test_a_cuda_out_of_memory_fails_the_run_once_with_the_estimate_and_the_device_memory(
    service_settings: Settings, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import darts_core.train.job as job

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(job._Trainer, "train_epoch", out_of_memory)
    training_id = _training(db_session, SPEC)
    assert TrainingRun(service_settings, training_id).execute() == "failed"
    statuses = _statuses(service_settings, training_id)
    assert [event.status for event in statuses] == ["running", "failed"]  # no retry
    error = statuses[-1].error or ""
    assert error.startswith("out of GPU memory: ")
    assert "estimated peak " in error and "estimated peak unknown" not in error
    assert "device memory unknown" in error  # no CUDA here: said, not guessed
    assert "WORKER_MEMORY_BYTES" not in error
