"""Who may do what: the API key of a request, its owner, and what that owner may see.

Every route but `/healthz`, `/readyz` and the page depends on `CurrentOwner` (directly, or through
`SearchAccess` / `TrainingAccess` / `DatasetAccess`, or `MetricsAccess` / `DocsAccess` which a setting
can open): `Authorization: Bearer <key>` from `darts-service keys create`, else 401 with
`WWW-Authenticate: Bearer`. Searches, trainings and datasets belong to the key's name; another owner
gets 404 for them, an admin sees all.
With `settings.no_auth` (`darts-service up --no-auth`, loopback only) every request acts as the admin
owner `local`.
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db_gate import DatabaseGate, run_in_gate
from app.models import Dataset, Search, Study, Training
from app.routes.responses import errors
from app.services import keys as key_service
from app.services.errors import NotFound
from app.services.keys import Owner
from app.services.read_cache import ReadCache

logger = logging.getLogger(__name__)

LOCAL_OWNER = Owner(name="local", admin=True)

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `darts-service keys create --name NAME` (or `<data-dir>/admin.key`).",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge})


def _session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


async def get_owner(request: Request, credentials: BearerCredentials) -> Owner:
    """The owner of the request's key; 401 without a key, or with an unknown or revoked one.

    What a key was found to be is kept for KEY_CACHE_SECONDS (app.services.read_cache): a client
    polling many times a second costs one lookup per that time. The lookup has a session of its own,
    closed at once: a request's own session (`SessionDep`) would stay open for as long as a
    Server-Sent Events stream runs.
    """
    if request.app.state.settings.no_auth:
        return LOCAL_OWNER
    if credentials is None:
        raise _unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (keys come from `darts-service keys create`)"
        )
    key = credentials.credentials
    if not key_service.well_formed(key):  # answered here: never a lookup, never kept
        raise _unauthorized("unknown or revoked API key", error="invalid_token")
    factory = _session_factory(request)

    def look_up() -> Owner | None:
        with factory() as session:
            use = key_service.find_key(session, key)
        if use is not None and use.stale_use_of is not None:
            # Written by a thread of its own: on SQLite a write can wait seconds for the one write
            # lock (a burst of submissions), and every request of this key waits for this lookup.
            threading.Thread(
                target=_record_use, args=(factory, use.stale_use_of), name="key-last-used", daemon=True
            ).start()
        return None if use is None else use.owner

    cache: ReadCache[Owner | None] = request.app.state.key_cache
    gate: DatabaseGate = request.app.state.key_gate
    owner = await cache.get(key_service.hash_key(key), lambda: run_in_gate(gate, look_up))
    if owner is None:
        raise _unauthorized("unknown or revoked API key", error="invalid_token")
    return owner


def _record_use(factory: sessionmaker[Session], key_id: int) -> None:
    try:
        with factory() as session:
            key_service.record_use(session, key_id)
    except SQLAlchemyError as exc:  # a missed `last_used_at` is written on a later use
        logger.warning("could not record the use of API key %s: %s", key_id, exc)


CurrentOwner = Annotated[Owner, Depends(get_owner)]


def listed_owner(owner: Owner, requested: str | None) -> str | None:
    """The owner a list shows: an admin's `?owner=` (None: everyone's), anyone else's own.

    A non-admin asking for someone else's gets "", a name no key can have: an empty list.
    """
    if owner.admin:
        return requested
    return owner.name if requested in (None, owner.name) else ""


def may_see(owner: Owner, resource_owner: str) -> bool:
    return owner.admin or resource_owner == owner.name


def visible_search(session: Session, owner: Owner, search_id: str) -> Search:
    """The search, when `owner` may see it; else NotFound (the same answer as for no such search: no leak)."""
    search = session.get(Search, search_id)
    if search is None or not may_see(owner, search.owner):
        raise NotFound(f"search {search_id!r} not found")
    return search


def visible_training(session: Session, owner: Owner, training_id: str) -> Training:
    """The training, when `owner` may see it; else NotFound (as for no such training)."""
    training = session.get(Training, training_id)
    if training is None or not may_see(owner, training.owner):
        raise NotFound(f"training {training_id!r} not found")
    return training


def _require_search_access(search_id: str, request: Request, owner: CurrentOwner) -> Owner:
    """404 for a search that does not exist or belongs to someone else (the same answer: no leak)."""
    with _session_factory(request)() as session:
        visible_search(session, owner, search_id)
    return owner


def _require_study_access(study_id: str, request: Request, owner: CurrentOwner) -> Owner:
    """404 for a study that does not exist or belongs to someone else."""
    with _session_factory(request)() as session:
        study = session.get(Study, study_id)
        visible = study is not None and may_see(owner, study.owner)
    if not visible:
        raise NotFound(f"study {study_id!r} not found")
    return owner


def _require_training_access(training_id: str, request: Request, owner: CurrentOwner) -> Owner:
    """404 for a training that does not exist or belongs to someone else (the same answer: no leak)."""
    with _session_factory(request)() as session:
        visible_training(session, owner, training_id)
    return owner


def _require_dataset_access(dataset_id: str, request: Request, owner: CurrentOwner) -> Owner:
    """404 for an uploaded dataset that belongs to someone else; built-ins (any other id) pass through."""
    with _session_factory(request)() as session:
        dataset = session.get(Dataset, dataset_id)
        hidden = dataset is not None and not may_see(owner, dataset.owner)
    if hidden:
        raise NotFound(f"dataset {dataset_id!r} not found")
    return owner


# The owner of a request on /searches/{search_id}..., /trainings/{training_id}...,
# /studies/{study_id}... or /datasets/{dataset_id}, once it may see it.
SearchAccess = Annotated[Owner, Depends(_require_search_access)]
TrainingAccess = Annotated[Owner, Depends(_require_training_access)]
DatasetAccess = Annotated[Owner, Depends(_require_dataset_access)]
StudyAccess = Annotated[Owner, Depends(_require_study_access)]

# What every protected router declares, so that no route added to it can forget the key.
UNAUTHORIZED_RESPONSE: dict[int | str, dict[str, Any]] = errors(401)
REQUIRE_OWNER = Depends(get_owner)


async def _metrics_access(request: Request, credentials: BearerCredentials) -> None:
    if not request.app.state.settings.metrics_public:
        await get_owner(request, credentials)


async def _docs_access(request: Request, credentials: BearerCredentials) -> None:
    if not request.app.state.settings.docs_public:
        await get_owner(request, credentials)


MetricsAccess = Depends(_metrics_access)
DocsAccess = Depends(_docs_access)
