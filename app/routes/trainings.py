"""`/trainings`: create, list, read, epochs, Server-Sent Events, cancel, delete, weights, exports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from app.auth import (
    REQUIRE_OWNER,
    UNAUTHORIZED_RESPONSE,
    CurrentOwner,
    TrainingAccess,
    listed_owner,
    may_see,
    visible_training,
)
from app.db import SessionDep
from app.db_gate import run_with_session
from app.lifecycle.status import Status
from app.routes.deps import CeleryDep, RedisDep, SettingsDep
from app.routes.polled import MAX_EPOCHS_PAGE, NOT_MODIFIED_RESPONSE, forget, owned_json, read_key
from app.routes.responses import errors
from app.schemas.common import Page
from app.schemas.trainings import TrainingEpochPublic, TrainingPublic, TrainingSpec
from app.services import exports as export_service
from app.services import job_json, jobs
from app.services import searches as search_service
from app.services import trainings as training_service
from app.services.job_feed import JobFeeds, OpenStreams
from darts_core.spec.artifacts import ExportFormat

router = APIRouter(
    prefix="/trainings", tags=["trainings"], dependencies=[REQUIRE_OWNER], responses=UNAUTHORIZED_RESPONSE
)



@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TrainingPublic,
    responses=errors(400, 404, 409, 413, 422, 429, 503),
)
async def create_training(
    spec: TrainingSpec,
    request: Request,
    celery: CeleryDep,
    settings: SettingsDep,
    response: Response,
    owner: CurrentOwner,
) -> TrainingPublic:
    """Queue the retraining of a genotype from scratch, owned by the key's owner.

    Give `genotype` (its JSON form or the DARTS string) and `dataset`, or `search_id` (one of your
    searches: its final genotype once it succeeded, or with `epoch` that epoch's; the dataset defaults
    to the search's). 404 for a search that is not yours, 409 when it has no final genotype yet, 422
    naming the field for bad input or a training too large for a worker, 429 as for searches (the
    quota counts searches and trainings together)."""

    def create(session: Session) -> TrainingPublic:
        training = training_service.create_training(
            session, spec, celery=celery, settings=settings, owner=owner.name,
            may_read=lambda search: may_see(owner, search.owner),
        )
        return TrainingPublic.model_validate(training)

    created = await run_with_session(request, create)  # one trip to the thread pool (a burst's writes)
    response.headers["Location"] = f"/trainings/{created.id}"
    return created


@router.get("", response_model=Page[TrainingPublic], responses=errors(400))
def list_trainings(
    session: SessionDep,
    current: CurrentOwner,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=search_service.MAX_PAGE_SIZE)] = search_service.DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
    owner: Annotated[str | None, Query(max_length=64, description="Admins: only this owner's")] = None,
) -> dict[str, Any]:
    """The owner's trainings (an admin's: everyone's), newest first; `next_cursor` as `?cursor=` pages."""
    items, next_cursor = training_service.list_trainings(
        session, status=status, limit=limit, cursor=cursor or None, owner=listed_owner(current, owner)
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get(
    "/{training_id}",
    response_model=TrainingPublic,
    responses={**errors(404), **NOT_MODIFIED_RESPONSE},
)
async def get_training(training_id: str, request: Request, owner: CurrentOwner) -> Response:
    """The training; up to READ_CACHE_SECONDS old (a write through this API process is seen at once)."""
    return await owned_json(
        request,
        owner,
        read_key("trainings", training_id),
        lambda session: job_json.training_json(session, training_id),
        not_found=f"training {training_id!r} not found",
    )


@router.get(
    "/{training_id}/epochs",
    response_model=Page[TrainingEpochPublic],
    responses={**errors(400, 404), **NOT_MODIFIED_RESPONSE},
)
async def list_epochs(
    training_id: str,
    request: Request,
    owner: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=MAX_EPOCHS_PAGE)] = MAX_EPOCHS_PAGE,
    cursor: Annotated[str | None, Query(description="The last epoch seen (a next_cursor)")] = None,
) -> Response:
    """Per-epoch metrics (train, validation and test accuracy and loss), in epoch order; up to
    READ_CACHE_SECONDS old."""
    after = jobs.epoch_cursor(cursor)
    return await owned_json(
        request,
        owner,
        read_key("trainings", training_id, (after, limit)),
        lambda session: job_json.training_epochs_json(session, training_id, after=after, limit=limit),
        not_found=f"training {training_id!r} not found",
    )


@router.post(
    "/{training_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainingPublic,
    responses=errors(404, 409),
)
async def cancel_training(
    training_id: str,
    owner: CurrentOwner,
    celery: CeleryDep,
    redis_client: RedisDep,
    settings: SettingsDep,
    background_tasks: BackgroundTasks,
    request: Request,
) -> TrainingPublic:
    """Cancel (idempotent): a queued training at once, a running one between two batches. 409 if finished;
    404 for a training that does not exist or is someone else's."""

    def revoke_after_response(task_id: str) -> None:
        background_tasks.add_task(jobs.revoke_task, celery, task_id)

    def cancel(session: Session) -> TrainingPublic:
        visible_training(session, owner, training_id)
        training = training_service.cancel_training(
            session, training_id, revoke=revoke_after_response, redis_client=redis_client, settings=settings
        )
        forget(request, training_id)  # Redis I/O: in this thread, not on the event loop
        return TrainingPublic.model_validate(training)

    return await run_with_session(request, cancel)  # one trip to the thread pool (a burst's writes)


@router.delete("/{training_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
def delete_training(
    training_id: str, session: SessionDep, settings: SettingsDep, _owner: TrainingAccess, request: Request
) -> Response:
    """Remove a finished training, its epochs, checkpoints and weights (409 while it is queued or running,
    or while the study it belongs to has not finished)."""
    training_service.delete_training(session, training_id, settings=settings)
    forget(request, training_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{training_id}/weights",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The trained weights (safetensors); `darts_core.load_trained(path)` loads them",
        },
        **errors(404, 409),
    },
)
def get_weights(
    training_id: str, session: SessionDep, settings: SettingsDep, _owner: TrainingAccess
) -> FileResponse:
    """The trained network's weights as a safetensors file (409 until the training has succeeded)."""
    path = training_service.weights_file(session, training_id, settings=settings)
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"training-{training_id}.safetensors"
    )


def _export_route(format: ExportFormat, media_type: str, loads_with: str) -> None:
    """`GET /trainings/{id}/model.onnx` or `/model.pt`: the export is built on first request (it may
    take seconds) and kept beside the weights."""
    name = format.file_name

    def get_export(
        training_id: str, session: SessionDep, settings: SettingsDep, _owner: TrainingAccess
    ) -> FileResponse:
        path = export_service.export_file(session, training_id, format, settings=settings)
        suffix = Path(name).suffix
        return FileResponse(path, media_type=media_type, filename=f"training-{training_id}{suffix}")

    get_export.__doc__ = (
        f"The trained network as {format.value} ({loads_with}), with its input shape, class names, "
        "normalisation and genotype as metadata; 409 until the training has succeeded."
    )
    router.add_api_route(
        f"/{{training_id}}/{name}",
        get_export,
        methods=["GET"],
        response_class=FileResponse,
        name=f"get_{format.value}_export",
        responses={
            200: {"content": {media_type: {}}, "description": f"{name}: runs with {loads_with}"},
            **errors(404, 409, 500),
        },
    )


_export_route(ExportFormat.onnx, "application/onnx", "onnxruntime, no darts_core needed")
_export_route(ExportFormat.torchscript, "application/octet-stream", "torch.jit.load, no darts_core needed")


@router.get(
    "/{training_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`epoch` and `status` events"},
        **errors(404, 429),
    },
)
async def training_events(
    training_id: str,
    request: Request,
    owner: CurrentOwner,
    settings: SettingsDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[
        str | None, Query(description="Resume point for clients that cannot send the Last-Event-ID header")
    ] = None,
) -> EventSourceResponse:
    """Server-Sent Events as for searches: every epoch record in order as an `epoch` event, a `status`
    event first and on every change; the stream ends after a terminal status. `Last-Event-ID` (or
    `?last_event_id=`) resumes after that epoch. 429 past MAX_SSE_STREAMS_PER_OWNER open streams."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    resume_from = last_event_id_header or last_event_id

    def starting_epoch() -> int:
        # Errors (a training not found or not the owner's, a foreign event id) are answered before the
        # stream starts, in one trip to the thread pool: a crowd of followers opening at once is common.
        with factory() as session:
            visible_training(session, owner, training_id)
            if not resume_from:
                return 0
            return training_service.epoch_after_event_id(session, training_id, resume_from)

    after = await run_in_threadpool(starting_epoch)
    streams: OpenStreams = request.app.state.open_streams
    ticket = streams.open(owner.name, settings.max_sse_streams_per_owner)
    feeds: JobFeeds = request.app.state.job_feeds
    poll_seconds: float = request.app.state.sse_poll_seconds
    events = ticket.wrap(feeds.stream(training_id, after, poll_seconds, kind="training"))
    return EventSourceResponse(events, ping=15, background=BackgroundTask(ticket.close))
