"""The JSON of the reads clients poll, with the owner of what was read: a search or a training and
their epoch pages, as their routes declare them (`SearchPublic`, `Page[EpochPublic]`, `TrainingPublic`,
`Page[TrainingEpochPublic]`). The routes keep these answers for a moment (app.services.read_cache) and
check the owner against the request's before answering. NotFound for an unknown job.

Each answer carries its entity tag (`ETag`, a hash of the JSON, computed once per build): a client that
sends it back in `If-None-Match` gets `304 Not Modified` and no body while the answer is unchanged.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from app.schemas.common import Page
from app.schemas.searches import SearchPublic
from app.schemas.trainings import TrainingEpochPublic, TrainingPublic
from app.services import searches as search_service
from app.services import trainings as training_service
from app.services.epoch_pages import EpochJsonCache, epoch_page_json


class OwnedJson(NamedTuple):
    """What a polled read answers: the owner of what was read, its JSON and the JSON's entity tag."""

    owner: str
    body: bytes
    etag: str

    @classmethod
    def of(cls, owner: str, body: bytes) -> OwnedJson:
        """`body` of `owner`, with its entity tag (a quoted hash of the bytes: strong, RFC 9110 8.8.3)."""
        return cls(owner, body, f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"')


_SEARCH = TypeAdapter(SearchPublic)
_TRAINING = TypeAdapter(TrainingPublic)
_TRAINING_EPOCHS = TypeAdapter(Page[TrainingEpochPublic])


def search_json(session: Session, search_id: str) -> OwnedJson:
    search = search_service.get_search(session, search_id)
    return OwnedJson.of(search.owner, _SEARCH.dump_json(SearchPublic.model_validate(search)))


def search_epochs_json(
    session: Session, cache: EpochJsonCache, search_id: str, *, after: int, limit: int
) -> OwnedJson:
    owner = search_service.get_search(session, search_id).owner
    return OwnedJson.of(owner, epoch_page_json(session, cache, search_id, after=after, limit=limit))


def training_json(session: Session, training_id: str) -> OwnedJson:
    training = training_service.get_training(session, training_id)
    return OwnedJson.of(training.owner, _TRAINING.dump_json(TrainingPublic.model_validate(training)))


def training_epochs_json(session: Session, training_id: str, *, after: int, limit: int) -> OwnedJson:
    owner = training_service.get_training(session, training_id).owner
    records = training_service.list_epochs(session, training_id, after=after, limit=limit + 1)
    next_cursor = str(records[limit - 1].epoch) if len(records) > limit else None
    page = Page[TrainingEpochPublic](
        items=[TrainingEpochPublic.model_validate(record) for record in records[:limit]],
        next_cursor=next_cursor,
    )
    return OwnedJson.of(owner, _TRAINING_EPOCHS.dump_json(page))
