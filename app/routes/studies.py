"""`/studies`: the DARTS paper's protocol as one request: create, list, read, events, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from app.auth import REQUIRE_OWNER, UNAUTHORIZED_RESPONSE, CurrentOwner, StudyAccess, listed_owner
from app.db import SessionDep
from app.lifecycle.status import Status
from app.routes.deps import CeleryDep, RedisDep, SettingsDep
from app.routes.polled import forget
from app.routes.responses import errors
from app.schemas.common import Page
from app.schemas.studies import StudyPublic, StudySpec, StudySummaryPublic
from app.services import studies as study_service
from app.services.job_feed import OpenStreams
from app.services.study_advance import StudyDeps
from app.services.study_feed import study_stream

router = APIRouter(
    prefix="/studies", tags=["studies"], dependencies=[REQUIRE_OWNER], responses=UNAUTHORIZED_RESPONSE
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyPublic,
    responses=errors(400, 413, 422, 429),
)
def create_study(
    spec: StudySpec,
    session: SessionDep,
    celery: CeleryDep,
    redis_client: RedisDep,
    settings: SettingsDep,
    response: Response,
    owner: CurrentOwner,
) -> dict[str, Any]:
    """Start a study: one search per seed (in parallel, on as many workers as there are), a selection
    training of each found genotype, the best by validation accuracy (ties: the lower seed), then its
    final training (when `final` is given). Every child's spec is validated first (422 naming the
    field); 429 when the owner's active searches plus the seeds exceed MAX_ACTIVE_SEARCHES_PER_OWNER."""
    deps = StudyDeps(settings=settings, celery=celery, redis_client=redis_client)
    study = study_service.create_study(session, spec, deps=deps, owner=owner.name)
    response.headers["Location"] = f"/studies/{study.id}"
    return study_service.study_detail(session, study.id)


@router.get("", response_model=Page[StudySummaryPublic], responses=errors(400))
def list_studies(
    session: SessionDep,
    current: CurrentOwner,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=study_service.MAX_PAGE_SIZE)] = study_service.DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
    owner: Annotated[str | None, Query(max_length=64, description="Admins: only this owner's")] = None,
) -> dict[str, Any]:
    """The owner's studies (an admin's: everyone's), newest first."""
    items, next_cursor = study_service.list_studies(
        session, status=status, limit=limit, cursor=cursor or None, owner=listed_owner(current, owner)
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{study_id}", response_model=StudyPublic, responses=errors(404))
def get_study(study_id: str, session: SessionDep, _owner: StudyAccess) -> dict[str, Any]:
    """The study with each stage's children (ids, statuses, metrics), the selection accuracies side by
    side, the chosen genotype, the final result, and its wall time against its children's run times."""
    return study_service.study_detail(session, study_id)


@router.post(
    "/{study_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StudyPublic,
    responses=errors(404, 409),
)
def cancel_study(
    study_id: str,
    session: SessionDep,
    _owner: StudyAccess,
    celery: CeleryDep,
    redis_client: RedisDep,
    settings: SettingsDep,
    request: Request,
) -> dict[str, Any]:
    """Cancel the study and every child (idempotent). 409 when it had already ended otherwise."""
    deps = StudyDeps(settings=settings, celery=celery, redis_client=redis_client)
    study_service.cancel_study(session, study_id, deps=deps)
    forget(request, *study_service.child_ids(session, study_id))
    return study_service.study_detail(session, study_id)


@router.delete("/{study_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
def delete_study(
    study_id: str, session: SessionDep, settings: SettingsDep, _owner: StudyAccess, request: Request
) -> Response:
    """Remove a finished study with its searches and trainings (409 while any of them may still run)."""
    deleted = study_service.child_ids(session, study_id)
    study_service.delete_study(session, study_id, settings=settings)
    forget(request, *deleted)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{study_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`study`, `child` and `epoch` events"},
        **errors(404, 429),
    },
)
async def study_events(
    study_id: str, request: Request, owner: StudyAccess, settings: SettingsDep
) -> EventSourceResponse:
    """Server-Sent Events of the whole study: `study` (status and stage; first and on every change),
    `child` (a child created or changed status) and `epoch` (each child's epochs, in order). Ends after
    the study's terminal status. 429 while the owner has MAX_SSE_STREAMS_PER_OWNER streams open."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    streams: OpenStreams = request.app.state.open_streams
    ticket = streams.open(owner.name, settings.max_sse_streams_per_owner)
    poll_seconds: float = request.app.state.sse_poll_seconds
    events = ticket.wrap(study_stream(factory, request.app.state.feed_gate, study_id, poll_seconds))
    return EventSourceResponse(events, ping=15, background=BackgroundTask(ticket.close))


