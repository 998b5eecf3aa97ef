"""`GET /searches/{id}/epochs` as JSON, each epoch record serialised once per API process.

Why (issue 10's load): a client following a search polls this page again and again, and the page holds
every finished epoch (up to 1000), each with its alphas and genotype as JSON columns. Loading the rows,
decoding their JSON, validating them into `EpochPublic` and encoding them again cost about half a
millisecond per epoch on every poll: a few hundred epochs made each poll tens of milliseconds of CPU,
which 100 pollers turned into seconds of queueing. An epoch's row is written once (by the ingester) and
never changed, so its JSON never changes either: it is kept here, per search, and a poll reads from SQL
only which epochs there are (two integer columns) plus the rows of epochs it has not seen yet.

The cache keeps the epochs of the `max_searches` most recently read searches (least recently read
dropped first). Deleting a search needs no invalidation: the page is served only after the search was
found, and search ids are never reused.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import SearchEpoch
from app.schemas.searches import EpochPublic
from app.services.searches import get_search

_EPOCH_JSON = TypeAdapter(EpochPublic)


class EpochJsonCache:
    """The JSON of epoch records by search id and row id (thread-safe; one per API process)."""

    def __init__(self, max_searches: int = 64) -> None:
        if max_searches < 1:
            raise ValueError(f"max_searches must be at least 1, got {max_searches}")
        self.max_searches = max_searches
        self._searches: OrderedDict[str, dict[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, search_id: str, row_ids: list[int]) -> dict[int, bytes]:
        """The cached JSON of those of `row_ids` seen before."""
        with self._lock:
            known = self._searches.get(search_id)
            if known is None:
                return {}
            self._searches.move_to_end(search_id)
            return {row_id: known[row_id] for row_id in row_ids if row_id in known}

    def put(self, search_id: str, records: dict[int, bytes]) -> None:
        with self._lock:
            self._searches.setdefault(search_id, {}).update(records)
            self._searches.move_to_end(search_id)
            while len(self._searches) > self.max_searches:
                self._searches.popitem(last=False)


def epoch_page_json(
    session: Session, cache: EpochJsonCache, search_id: str, *, after: int, limit: int
) -> bytes:
    """`Page[EpochPublic]` as JSON: the epochs of `search_id` after `after`, at most `limit` of them,
    and `next_cursor` (the last epoch's number when more follow). NotFound for an unknown search."""
    get_search(session, search_id)
    keys = session.execute(
        select(SearchEpoch.id, SearchEpoch.epoch)
        .where(SearchEpoch.search_id == search_id, SearchEpoch.epoch > after)
        .order_by(SearchEpoch.epoch)
        .limit(limit + 1)
    ).all()
    next_cursor = str(keys[limit - 1].epoch) if len(keys) > limit else None
    row_ids = [row_id for row_id, _epoch in keys[:limit]]
    records = cache.get(search_id, row_ids)
    missing = [row_id for row_id in row_ids if row_id not in records]
    if missing:
        loaded = {
            row.id: _EPOCH_JSON.dump_json(EpochPublic.model_validate(row))
            for row in session.scalars(select(SearchEpoch).where(SearchEpoch.id.in_(missing)))
        }
        cache.put(search_id, loaded)
        records.update(loaded)
    items = b",".join(records[row_id] for row_id in row_ids)
    return b'{"items":[' + items + b'],"next_cursor":' + json.dumps(next_cursor).encode() + b"}"
