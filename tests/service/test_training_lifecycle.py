"""app.lifecycle drives trainings as it drives searches (the same status table, lease, projection,
cancel, start decision and sweeps), on a real migrated database, without Celery or Redis."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.events.schema import StatusEvent, TrainingEpochEvent, TrainingOutcome, parse_event
from app.lifecycle import cancel as lifecycle_cancel
from app.lifecycle import sweep
from app.lifecycle.kinds import TRAINING
from app.lifecycle.lease import Lease, owner_prefix
from app.lifecycle.projection import apply_event
from app.lifecycle.start import StartDecision, decide_start
from app.models import Search, Training, TrainingEpoch

from .conftest import epoch_genotype


def _training(session: Session, status: str = "queued", **values) -> Training:
    training = Training(
        id=str(uuid.uuid4()), name="t", owner="tester", status=status, spec={}, dataset_ref="builtin:digits",
        epochs=3, genotype=epoch_genotype(1), created_at=values.pop("created_at", utcnow()), **values,
    )
    session.add(training)
    session.commit()
    return training


def _reload(session: Session, training: Training) -> Training:
    session.expire_all()
    return session.get(Training, training.id)


def _epoch(training_id: str, epoch: int, attempt: int | None = None, **values) -> TrainingEpochEvent:
    record = dict(
        epoch=epoch, train_loss=1.0 / epoch, train_acc=0.5, valid_loss=0.9, valid_acc=0.6, test_loss=0.8,
        test_acc=0.1 * epoch, lr=0.01, drop_path_prob=0.1, seconds=1.0,
    )
    record.update(values)
    return TrainingEpochEvent(job_id=training_id, attempt=attempt, **record)


def _status(training_id: str, status: str, **values) -> StatusEvent:
    return StatusEvent(job_id=training_id, kind="training", status=status, **values)


def test_training_epochs_are_projected_once_and_fenced_by_the_attempt(db_session: Session) -> None:
    training = _training(db_session, attempts=2)
    assert apply_event(db_session, _epoch(training.id, 1, attempt=2), "1-0") == "stored"
    assert apply_event(db_session, _epoch(training.id, 1, attempt=2), "1-0") == "duplicate"
    assert apply_event(db_session, _epoch(training.id, 2, attempt=1), "2-0") == "fenced"
    # No validation split: valid_* are null.
    assert apply_event(db_session, _epoch(training.id, 2, valid_loss=None, valid_acc=None), "3-0") == "stored"
    db_session.commit()
    after = _reload(db_session, training)
    assert (after.status, after.epoch) == ("running", 2)
    assert after.metrics["test_acc"] == 0.2 and after.metrics["valid_acc"] is None
    rows = (
        db_session.query(TrainingEpoch).filter_by(training_id=training.id).order_by(TrainingEpoch.epoch).all()
    )
    assert [(row.epoch, row.stream_id, row.valid_acc) for row in rows] == [(1, "1-0", 0.6), (2, "3-0", None)]
    # A search with the same id space is untouched: the kind picks the table.
    assert db_session.get(Search, training.id) is None


def test_a_training_succeeds_with_its_final_figures_and_never_changes_again(db_session: Session) -> None:
    training = _training(db_session, status="running")
    outcome = TrainingOutcome(
        test_accuracy=0.98, test_loss=0.07, valid_accuracy=0.97, parameters=12345, multiply_adds=678
    )
    assert apply_event(db_session, _status(training.id, "succeeded", outcome=outcome), None) == "stored"
    assert apply_event(db_session, _status(training.id, "failed", error="late"), None) == "stale"
    db_session.commit()
    after = _reload(db_session, training)
    assert (after.status, after.error, after.finished_at is not None) == ("succeeded", None, True)
    assert (after.test_accuracy, after.test_loss, after.valid_accuracy) == (0.98, 0.07, 0.97)
    assert (after.parameters, after.multiply_adds) == (12345, 678)


def test_events_name_their_kind_and_entries_from_before_trainings_still_parse() -> None:
    old = json.dumps({"type": "status", "search_id": "abc", "status": "running"})
    event = parse_event(old)
    assert (event.kind, event.job_id) == ("search", "abc")
    new = parse_event(_epoch("t-1", 3).model_dump_json())
    assert (new.kind, new.job_id, new.type) == ("training", "t-1", "training_epoch")
    assert json.loads(_status("t-2", "queued").model_dump_json())["kind"] == "training"


def test_an_event_of_a_deleted_training_is_an_orphan(db_session: Session) -> None:
    assert apply_event(db_session, _epoch(str(uuid.uuid4()), 1), None) == "orphan"


def _lease(factory: sessionmaker[Session], training: Training) -> Lease:
    return Lease(factory, training.id, seconds=30, max_attempts=3, kind=TRAINING)


def test_a_training_s_lease_has_a_fencing_token_and_one_holder(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    training = _training(db_session)
    first, second = _lease(session_factory, training), _lease(session_factory, training)
    assert first.acquire() and first.token == 1
    assert not second.acquire()
    assert decide_start(db_session, training.id, max_attempts=3, cancel_flag=False, kind=TRAINING) == (
        StartDecision.duplicate
    )
    assert first.renew() and first.release()
    assert second.acquire() and second.token == 2
    assert sweep.hand_back(session_factory, training.id, second.owner, 2, TRAINING)
    after = _reload(db_session, training)
    assert (after.status, after.lease_owner, after.attempts) == ("queued", None, 1)


def test_the_start_decision_reads_the_training_row(db_session: Session) -> None:
    def decide(training_id: str) -> StartDecision:
        return decide_start(db_session, training_id, max_attempts=3, cancel_flag=False, kind=TRAINING)

    assert decide(_training(db_session).id) == StartDecision.run
    assert decide(str(uuid.uuid4())) == StartDecision.missing
    assert decide(_training(db_session, status="succeeded").id) == StartDecision.finished
    assert decide(_training(db_session, cancel_requested=True).id) == StartDecision.cancel
    assert decide(_training(db_session, attempts=3).id) == StartDecision.exhausted


def test_cancelling_a_training_queued_at_once_running_between_batches(db_session: Session) -> None:
    queued = _training(db_session, celery_task_id="task-1")
    revoked: list[str] = []
    flagged: list[str] = []
    result = lifecycle_cancel.cancel(db_session, queued, revoke=revoked.append, raise_flag=flagged.append)
    assert (result.status, revoked, flagged) == ("cancelled", ["task-1"], [])
    running = _training(db_session, status="running")
    result = lifecycle_cancel.cancel(db_session, running, revoke=revoked.append, raise_flag=flagged.append)
    assert (result.status, result.cancel_requested, flagged) == ("cancelling", True, [running.id])


def test_the_sweeps_hand_back_trainings_of_dead_workers_and_resend_lost_tasks(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    old = utcnow() - timedelta(minutes=5)
    dead = _training(db_session, status="running", created_at=old, lease_owner=f"{owner_prefix(4242)}abc",
                     lease_expires_at=utcnow() + timedelta(minutes=10))
    cancelling = _training(db_session, status="cancelling", lease_owner="h:1:x",
                           lease_expires_at=utcnow() - timedelta(seconds=5))
    lost = _training(db_session, created_at=old)
    # Releasing a dead process's leases covers every kind of job.
    assert sweep.release_leases_of(session_factory, owner_prefix(4242)) == 1
    enqueued: list[str] = []
    result = sweep.requeue_expired(
        session_factory, enqueue=enqueued.append, cancel_flag_raised=lambda _: False, kind=TRAINING
    )
    assert result.requeued == enqueued == [dead.id] and result.cancelled == [cancelling.id]
    assert _reload(db_session, dead).status == "queued"
    assert _reload(db_session, cancelling).status == "cancelled"
    # The search sweep leaves trainings alone; the training reconciler re-sends the lost tasks.
    assert sweep.reconcile_queue(session_factory, queued_ids=lambda: set(), enqueue=enqueued.append) == []
    resent = sweep.reconcile_queue(
        session_factory, queued_ids=lambda: {dead.id}, enqueue=enqueued.append, kind=TRAINING
    )
    assert resent == [lost.id]
