"""`/searches`: create, list, read, genotype, epochs, Server-Sent Events, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from app.auth import (
    REQUIRE_OWNER,
    UNAUTHORIZED_RESPONSE,
    CurrentOwner,
    SearchAccess,
    listed_owner,
    visible_search,
)
from app.db import SessionDep
from app.db_gate import run_with_session
from app.lifecycle.status import Status
from app.routes.deps import CeleryDep, RedisDep, SettingsDep
from app.routes.polled import MAX_EPOCHS_PAGE, NOT_MODIFIED_RESPONSE, forget, owned_json, read_key
from app.routes.responses import errors
from app.schemas.common import Page
from app.schemas.searches import EpochPublic, SearchEstimatePublic, SearchPublic, SearchSpec
from app.services import admission, job_json, jobs
from app.services import searches as search_service
from app.services.epoch_pages import EpochJsonCache
from app.services.genotype_svg import genotype_svg
from app.services.job_feed import JobFeeds, OpenStreams

router = APIRouter(
    prefix="/searches", tags=["searches"], dependencies=[REQUIRE_OWNER], responses=UNAUTHORIZED_RESPONSE
)

MAX_EPOCH = 1000  # training.epochs' upper bound (darts_core.spec.search_spec.TrainingConfig)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SearchPublic,
    responses=errors(400, 413, 422, 429, 503),
)
async def create_search(
    spec: SearchSpec,
    request: Request,
    celery: CeleryDep,
    settings: SettingsDep,
    response: Response,
    owner: CurrentOwner,
) -> SearchPublic:
    """Queue a DARTS search owned by the key's owner. The response's `spec` is the spec as accepted, every
    default filled in. 429 (with `Retry-After`) while the owner has MAX_ACTIVE_SEARCHES_PER_OWNER searches
    queued, running or cancelling; 422 for an uploaded dataset that is not the owner's, and when the
    admission estimate (`POST /searches/estimate`) exceeds WORKER_MEMORY_BYTES: the message names the
    estimate, the limit and the fields to lower."""

    def create(session: Session) -> SearchPublic:
        search = search_service.create_search(
            session, spec, celery=celery, settings=settings, owner=owner.name
        )
        return SearchPublic.model_validate(search)

    created = await run_with_session(request, create)  # one trip to the thread pool (a burst's writes)
    response.headers["Location"] = f"/searches/{created.id}"
    return created


@router.post("/estimate", response_model=SearchEstimatePublic, responses=errors(400, 413, 422))
def estimate_search(
    spec: SearchSpec, session: SessionDep, settings: SettingsDep, owner: CurrentOwner
) -> dict[str, Any]:
    """What the search of this spec would need (exact weight count, estimated peak memory) against what
    a worker has; creates nothing. `fits` tells whether `POST /searches` would accept its size."""
    return admission.estimate(session, spec, settings, owner=owner.name)


@router.get("", response_model=Page[SearchPublic], responses=errors(400))
def list_searches(
    session: SessionDep,
    current: CurrentOwner,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=search_service.MAX_PAGE_SIZE)] = search_service.DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
    owner: Annotated[str | None, Query(max_length=64, description="Admins: only this owner's")] = None,
) -> dict[str, Any]:
    """The owner's searches (an admin's: everyone's), newest first. Pass `next_cursor` back as `?cursor=`
    for the next page (an empty cursor is none)."""
    items, next_cursor = search_service.list_searches(
        session, status=status, limit=limit, cursor=cursor or None, owner=listed_owner(current, owner)
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get(
    "/{search_id}",
    response_model=SearchPublic,
    responses={**errors(404), **NOT_MODIFIED_RESPONSE},
)
async def get_search(search_id: str, request: Request, owner: CurrentOwner) -> Response:
    """The search; up to READ_CACHE_SECONDS old (a write through this API process is seen at once)."""
    return await owned_json(
        request,
        owner,
        read_key("searches", search_id),
        lambda session: job_json.search_json(session, search_id),
        not_found=f"search {search_id!r} not found",
    )


@router.get("/{search_id}/genotype", responses=errors(404))
def get_genotype(
    search_id: str,
    session: SessionDep,
    _owner: SearchAccess,
    epoch: Annotated[int | None, Query(ge=1, le=MAX_EPOCH, description="An earlier epoch's genotype")] = None,
) -> dict[str, Any]:
    """The genotype in the DARTS format (`normal`, `normal_concat`, `reduce`, `reduce_concat`).

    404 before the first epoch has finished, and for an epoch that has not (yet) finished.
    """
    return search_service.get_genotype(session, search_id, epoch)


@router.get(
    "/{search_id}/genotype.svg",
    response_class=Response,
    responses={
        200: {"content": {"image/svg+xml": {}}, "description": "The two cells drawn as graphs"},
        **errors(404),
    },
)
def get_genotype_svg(
    search_id: str,
    session: SessionDep,
    _owner: SearchAccess,
    epoch: Annotated[int | None, Query(ge=1, le=MAX_EPOCH, description="An earlier epoch's genotype")] = None,
) -> Response:
    genotype = search_service.get_genotype(session, search_id, epoch)
    return Response(genotype_svg(genotype), media_type="image/svg+xml")


@router.get(
    "/{search_id}/epochs",
    response_model=Page[EpochPublic],
    responses={**errors(400, 404), **NOT_MODIFIED_RESPONSE},
)
async def list_epochs(
    search_id: str,
    request: Request,
    owner: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=MAX_EPOCHS_PAGE)] = MAX_EPOCHS_PAGE,
    cursor: Annotated[str | None, Query(description="The last epoch seen (a next_cursor)")] = None,
) -> Response:
    """Per-epoch metrics, in epoch order; up to READ_CACHE_SECONDS old."""
    after = jobs.epoch_cursor(cursor)
    epoch_json: EpochJsonCache = request.app.state.epoch_json
    # Served as the JSON of Page[EpochPublic] (the declared response_model), built from epochs
    # serialised once each (app.services.epoch_pages explains why).
    return await owned_json(
        request,
        owner,
        read_key("searches", search_id, (after, limit)),
        lambda session: job_json.search_epochs_json(session, epoch_json, search_id, after=after, limit=limit),
        not_found=f"search {search_id!r} not found",
    )


@router.post(
    "/{search_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SearchPublic,
    responses=errors(404, 409),
)
async def cancel_search(
    search_id: str,
    owner: CurrentOwner,
    celery: CeleryDep,
    redis_client: RedisDep,
    settings: SettingsDep,
    background_tasks: BackgroundTasks,
    request: Request,
) -> SearchPublic:
    """Cancel (idempotent): a queued search at once, a running one between two batches. 409 if finished;
    404 for a search that does not exist or is someone else's."""

    def revoke_after_response(task_id: str) -> None:
        background_tasks.add_task(jobs.revoke_task, celery, task_id)

    def cancel(session: Session) -> SearchPublic:
        visible_search(session, owner, search_id)
        search = search_service.cancel_search(
            session, search_id, revoke=revoke_after_response, redis_client=redis_client, settings=settings
        )
        forget(request, search_id)  # Redis I/O: in this thread, not on the event loop
        return SearchPublic.model_validate(search)

    return await run_with_session(request, cancel)  # one trip to the thread pool (a burst's writes)


@router.delete("/{search_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
def delete_search(
    search_id: str, session: SessionDep, settings: SettingsDep, _owner: SearchAccess, request: Request
) -> Response:
    """Remove a finished search, its epochs and its artifacts (409 while it is queued or running, or
    while the study it belongs to has not finished)."""
    search_service.delete_search(session, search_id, settings=settings)
    forget(request, search_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{search_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`epoch` and `status` events"},
        **errors(404, 429),
    },
)
async def search_events(
    search_id: str,
    request: Request,
    owner: CurrentOwner,
    settings: SettingsDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[
        str | None, Query(description="Resume point for clients that cannot send the Last-Event-ID header")
    ] = None,
) -> EventSourceResponse:
    """Server-Sent Events read from SQL: every epoch record in order as an `epoch` event (id: its Redis
    stream entry id, or the epoch number when it has none), and a `status` event first and on every
    change. The stream ends after a terminal status (`succeeded`, `failed`, `cancelled`) has been sent.
    `Last-Event-ID` (or `?last_event_id=`) resumes after that epoch. 429 while the owner has
    MAX_SSE_STREAMS_PER_OWNER streams open on this API process."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    resume_from = last_event_id_header or last_event_id

    def starting_epoch() -> int:
        # Errors (a search not found or not the owner's, a foreign event id) are answered before the
        # stream starts, in one trip to the thread pool: a crowd of followers opening at once is common.
        with factory() as session:
            visible_search(session, owner, search_id)
            if not resume_from:
                return 0
            return search_service.epoch_after_event_id(session, search_id, resume_from)

    after = await run_in_threadpool(starting_epoch)
    streams: OpenStreams = request.app.state.open_streams
    ticket = streams.open(owner.name, settings.max_sse_streams_per_owner)
    feeds: JobFeeds = request.app.state.job_feeds
    poll_seconds: float = request.app.state.sse_poll_seconds
    events = ticket.wrap(feeds.stream(search_id, after, poll_seconds))
    # The background task closes the ticket of a stream whose generator never ran (client gone first).
    return EventSourceResponse(events, ping=15, background=BackgroundTask(ticket.close))
