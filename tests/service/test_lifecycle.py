"""app.lifecycle on a real migrated database, without Celery or Redis: every transition the projection
allows or refuses, the lease and its fencing token, the sweep, the reconciler, cancel and the start
decision."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.events.schema import EpochEvent, StatusEvent
from app.lifecycle import cancel as lifecycle_cancel
from app.lifecycle import sweep
from app.lifecycle.lease import Lease, owner_prefix
from app.lifecycle.projection import apply_event
from app.lifecycle.start import StartDecision, decide_start
from app.lifecycle.status import TERMINAL, TRANSITIONS, InvalidTransition, Status, check_transition
from app.models import Search, SearchEpoch

from .conftest import epoch_genotype

# Every allowed move, written out here as the docs' table states it (not read from the module).
ALLOWED = {
    ("queued", "running"), ("queued", "cancelled"), ("queued", "cancelling"), ("queued", "failed"),
    ("running", "queued"), ("running", "cancelling"), ("running", "succeeded"), ("running", "failed"),
    ("running", "cancelled"),
    ("cancelling", "cancelled"), ("cancelling", "succeeded"), ("cancelling", "failed"),
}


def _search(session: Session, status: str = "queued", **values) -> Search:
    search = Search(
        id=str(uuid.uuid4()), name="s", owner="tester", status=status, spec={}, dataset_ref="builtin:digits",
        epochs=3,
        created_at=values.pop("created_at", utcnow()), **values,
    )
    session.add(search)
    session.commit()
    return search


def _reload(session: Session, search: Search) -> Search:
    session.expire_all()
    return session.get(Search, search.id)


def _epoch(search_id: str, epoch: int, attempt: int | None = None) -> EpochEvent:
    return EpochEvent(
        search_id=search_id, attempt=attempt, epoch=epoch, train_loss=1.0, train_acc=0.5, valid_loss=1.0,
        valid_acc=0.1 * epoch, lr=0.01, seconds=1.0, genotype=epoch_genotype(epoch),
        alphas={"normal": [[0.5, 0.5]], "reduce": [[0.5, 0.5]]},
    )


def test_the_table_has_no_way_out_of_a_terminal_status() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    for terminal, other in itertools.product(TERMINAL, Status):
        with pytest.raises(InvalidTransition, match=f"from '{terminal}' to '{other}'"):
            check_transition(terminal, other)


def test_a_refused_transition_names_the_kind_of_job() -> None:
    with pytest.raises(InvalidTransition, match="^a training cannot go from 'succeeded' to 'running'$"):
        check_transition(Status.succeeded, Status.running, "training")
    with pytest.raises(InvalidTransition, match="^a job cannot go"):
        check_transition(Status.succeeded, Status.running)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(Status, Status)))
def test_the_projection_applies_exactly_the_allowed_status_changes(
    db_session: Session, current: Status, target: Status
) -> None:
    search = _search(db_session, status=current)
    outcome = apply_event(db_session, StatusEvent(search_id=search.id, status=target, error="boom"), None)
    db_session.commit()
    after = _reload(db_session, search)
    if current == target:
        assert outcome == "duplicate" and after.status == current
    elif (current, target) in ALLOWED:
        assert outcome == "stored" and after.status == target
        assert (after.finished_at is not None) == (target in TERMINAL)
        assert after.error == ("boom" if target == "failed" else None)
    else:
        assert outcome == "stale" and after.status == current and after.finished_at is None


def test_an_epoch_is_stored_once_and_marks_a_queued_search_running(db_session: Session) -> None:
    search = _search(db_session)
    assert apply_event(db_session, _epoch(search.id, 1), "1-0") == "stored"
    assert apply_event(db_session, _epoch(search.id, 1), "2-0") == "duplicate"
    db_session.commit()
    after = _reload(db_session, search)
    assert after.status == "running" and after.epoch == 1 and after.best_valid_acc == pytest.approx(0.1)
    assert db_session.query(SearchEpoch).filter_by(search_id=search.id).count() == 1


def test_collapse_metrics_and_an_early_stop_reach_the_rows(db_session: Session) -> None:
    search = _search(db_session)
    for epoch in (1, 2):
        event = _epoch(search.id, epoch).model_copy(
            update={
                "skip_connections": epoch, "parameter_free_ops": epoch + 1, "alpha_entropy": 2.0 / epoch,
                "hessian_eigenvalue": 0.5 if epoch == 2 else None,
            }
        )
        assert apply_event(db_session, event, f"{epoch}-0") == "stored"
    db_session.commit()
    rows = db_session.query(SearchEpoch).filter_by(search_id=search.id).order_by(SearchEpoch.epoch).all()
    metrics = [
        (r.skip_connections, r.parameter_free_ops, r.alpha_entropy, r.hessian_eigenvalue) for r in rows
    ]
    assert metrics == [(1, 2, 2.0, None), (2, 3, 1.0, 0.5)]
    assert _reload(db_session, search).metrics["skip_connections"] == 2
    reason = "darts_plus: the normal cell of epoch 2 has 2 skip connections"
    kept = epoch_genotype(1)
    stop = StatusEvent(search_id=search.id, status="succeeded", stop_reason=reason, genotype=kept)
    assert apply_event(db_session, stop, None) == "stored"
    db_session.commit()
    after = _reload(db_session, search)
    assert after.status == "succeeded" and after.stopped_early and after.stop_reason == reason
    assert after.genotype == epoch_genotype(1)  # the genotype the rule kept, not epoch 2's


def test_events_of_a_superseded_attempt_are_fenced_off(db_session: Session) -> None:
    search = _search(db_session, status="running", attempts=2)
    assert apply_event(db_session, _epoch(search.id, 1, attempt=1), "1-0") == "fenced"
    late_failure = StatusEvent(search_id=search.id, status="failed", attempt=1)
    assert apply_event(db_session, late_failure, None) == "fenced"
    assert apply_event(db_session, _epoch(search.id, 1, attempt=2), "2-0") == "stored"
    db_session.commit()
    after = _reload(db_session, search)
    assert after.status == "running" and after.epoch == 1


def test_an_event_of_a_deleted_search_is_an_orphan(db_session: Session) -> None:
    assert apply_event(db_session, _epoch(str(uuid.uuid4()), 1), None) == "orphan"


# -- the lease -------------------------------------------------------------------------------------


def _lease(
    factory: sessionmaker[Session], search: Search, seconds: float = 30, max_attempts: int = 3
) -> Lease:
    return Lease(factory, search.id, seconds=seconds, max_attempts=max_attempts)


def test_one_lease_at_a_time_and_each_attempt_is_a_new_token(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    search = _search(db_session)
    first, second = _lease(session_factory, search), _lease(session_factory, search)
    assert first.acquire() and first.token == 1
    assert not second.acquire()
    assert first.renew()
    # The lease expires (its holder stalled): another worker takes it with the next token.
    db_session.execute(update(Search).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    db_session.commit()
    assert second.acquire() and second.token == 2
    assert not first.renew() and not first.finish() and not first.release()
    assert second.release(give_back_attempt=True)
    after = _reload(db_session, search)
    assert after.lease_owner is None and after.attempts == 1


def test_no_lease_past_the_attempts_cap_nor_on_a_finished_search(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    exhausted = _search(db_session, attempts=3)
    assert not _lease(session_factory, exhausted, max_attempts=3).acquire()
    finished = _search(db_session, status="succeeded")
    assert not _lease(session_factory, finished).acquire()


def test_a_lease_that_cannot_be_renewed_is_given_up_before_it_expires(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    search = _search(db_session)
    lease = _lease(session_factory, search, seconds=1.0)
    assert lease.acquire()
    assert lease.give_up_after < lease.seconds  # it stops before another worker could take over
    lease.start_heartbeat()
    try:
        # Another worker took it over: the next renewal notices.
        db_session.execute(update(Search).values(lease_owner="someone-else"))
        db_session.commit()
        assert lease.lost.wait(5.0)
    finally:
        lease.stop_heartbeat()


def test_a_run_finds_its_lease_overdue_even_while_no_heartbeat_runs(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    # The run asks between batches: a heartbeat stuck in a renewal must not keep it going.
    search = _search(db_session)
    lease = _lease(session_factory, search, seconds=2.0)  # overdue 1.2 s after its last renewal
    assert lease.acquire()
    assert not lease.overdue() and not lease.lost.is_set()
    deadline = time.monotonic() + 10
    while not lease.overdue():
        assert time.monotonic() < deadline, "the lease never became overdue"
        time.sleep(0.02)
    assert lease.lost.is_set()


# -- the sweep and the reconciler --------------------------------------------------------------------


def _expire(db_session: Session, search: Search, owner: str = "host:1:x") -> None:
    db_session.execute(
        update(Search)
        .where(Search.id == search.id)
        .values(lease_owner=owner, lease_expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.commit()


def test_the_sweep_requeues_expired_searches_and_cancels_expired_cancellations(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    running, cancelling, flagged, alive = (_search(db_session, status=s) for s in
                                          ("running", "cancelling", "running", "running"))
    for search in (running, cancelling, flagged):
        _expire(db_session, search)
    db_session.execute(update(Search).where(Search.id == alive.id).values(
        lease_owner="host:2:y", lease_expires_at=utcnow() + timedelta(seconds=60)))
    db_session.commit()
    enqueued: list[str] = []
    result = sweep.requeue_expired(
        session_factory, enqueue=enqueued.append, cancel_flag_raised=lambda sid: sid == flagged.id
    )
    assert result.requeued == enqueued == [running.id]
    assert sorted(result.cancelled) == sorted([cancelling.id, flagged.id])
    statuses = {s.id: (_reload(db_session, s).status, _reload(db_session, s).lease_owner)
                for s in (running, cancelling, flagged, alive)}
    assert statuses == {
        running.id: ("queued", None), cancelling.id: ("cancelled", None), flagged.id: ("cancelled", None),
        alive.id: ("running", "host:2:y"),
    }
    # A second sweeper finds nothing left to do.
    again = sweep.requeue_expired(
        session_factory, enqueue=enqueued.append, cancel_flag_raised=lambda _: False
    )
    assert again.requeued == [] and enqueued == [running.id]


def test_a_failed_enqueue_leaves_the_search_to_the_reconciler(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    search = _search(db_session, status="running", created_at=utcnow() - timedelta(minutes=5))
    _expire(db_session, search)

    def broker_down(_: str) -> None:
        raise ConnectionError("broker unreachable")

    sweep.requeue_expired(session_factory, enqueue=broker_down, cancel_flag_raised=lambda _: False)
    assert _reload(db_session, search).status == "queued"
    sent: list[str] = []
    lost = sweep.reconcile_queue(session_factory, queued_ids=lambda: set(), enqueue=sent.append)
    assert lost == [search.id]
    assert sent == [search.id]


def test_the_reconciler_leaves_searches_whose_task_waits_or_is_young_or_leased(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    old = utcnow() - timedelta(minutes=5)
    waiting = _search(db_session, created_at=old)
    young = _search(db_session)
    leased = _search(db_session, created_at=old, lease_owner="h:1:z",
                     lease_expires_at=utcnow() + timedelta(seconds=60))
    lost = _search(db_session, created_at=old)
    _search(db_session, status="running", created_at=old)
    sent: list[str] = []
    assert sweep.reconcile_queue(session_factory, queued_ids=lambda: {waiting.id}, enqueue=sent.append) == [
        lost.id
    ]
    assert sent == [lost.id] and young.id not in sent and leased.id not in sent


def test_releasing_a_dead_process_s_leases_lets_the_sweep_hand_them_back_at_once(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    search = _search(db_session, status="running", lease_owner=f"{owner_prefix(4242)}abc",
                     lease_expires_at=utcnow() + timedelta(minutes=10))
    other = _search(db_session, status="running", lease_owner=f"{owner_prefix(42)}abc",
                    lease_expires_at=utcnow() + timedelta(minutes=10))
    assert sweep.release_leases_of(session_factory, owner_prefix(4242)) == 1
    result = sweep.requeue_expired(
        session_factory, enqueue=lambda _: None, cancel_flag_raised=lambda _: False
    )
    assert result.requeued == [search.id]
    assert _reload(db_session, other).status == "running"


def test_a_warm_shutdown_hands_the_search_back_without_counting_the_attempt(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    search = _search(db_session)
    lease = _lease(session_factory, search)
    assert lease.acquire()
    apply_event(db_session, StatusEvent(search_id=search.id, status="running", attempt=lease.token), None)
    db_session.commit()
    assert sweep.hand_back(session_factory, search.id, lease.owner, lease.token)
    after = _reload(db_session, search)
    assert (after.status, after.lease_owner, after.attempts) == ("queued", None, 0)
    assert not sweep.hand_back(session_factory, search.id, lease.owner, lease.token)


# -- cancel and the start decision -------------------------------------------------------------------


def _cancel(session: Session, search: Search) -> tuple[Search, list[str], list[str]]:
    revoked: list[str] = []
    flagged: list[str] = []
    result = lifecycle_cancel.cancel(session, search, revoke=revoked.append, raise_flag=flagged.append)
    return result, revoked, flagged


def test_cancel_of_each_status(db_session: Session) -> None:
    queued = _search(db_session, celery_task_id="task-1")
    result, revoked, flagged = _cancel(db_session, queued)
    assert (result.status, revoked, flagged) == ("cancelled", ["task-1"], [])

    leased = _search(db_session, lease_owner="h:1:a", lease_expires_at=utcnow() + timedelta(seconds=60))
    result, revoked, flagged = _cancel(db_session, leased)
    assert (result.status, revoked, flagged) == ("cancelling", [], [leased.id])

    running = _search(db_session, status="running")
    assert _cancel(db_session, running)[0].status == "cancelling"
    assert _cancel(db_session, running)[0].status == "cancelling"  # idempotent, flag raised again
    assert _cancel(db_session, _search(db_session, status="cancelled"))[0].status == "cancelled"
    for finished in ("succeeded", "failed"):
        with pytest.raises(lifecycle_cancel.AlreadyFinished):
            _cancel(db_session, _search(db_session, status=finished))


def test_what_a_worker_does_with_a_task(db_session: Session) -> None:
    def decide(search_id: str, cancel_flag: bool = False) -> StartDecision:
        return decide_start(db_session, search_id, max_attempts=3, cancel_flag=cancel_flag)

    assert decide(str(uuid.uuid4())) == StartDecision.missing
    assert decide(_search(db_session).id) == StartDecision.run
    assert decide(_search(db_session).id, cancel_flag=True) == StartDecision.cancel
    assert decide(_search(db_session, cancel_requested=True).id) == StartDecision.cancel
    assert decide(_search(db_session, status="succeeded").id) == StartDecision.finished
    assert decide(_search(db_session, attempts=3).id) == StartDecision.exhausted
    held = _search(db_session, status="running", lease_owner="h:1:b",
                   lease_expires_at=utcnow() + timedelta(seconds=60))
    assert decide(held.id) == StartDecision.duplicate
    expired = _search(db_session, status="running", lease_owner="h:1:c",
                      lease_expires_at=utcnow() - timedelta(seconds=1), attempts=1)
    assert decide(expired.id) == StartDecision.run
