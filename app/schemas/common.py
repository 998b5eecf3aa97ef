"""What every API schema shares: the strict base, the page of a list, names and ids from clients.

Pydantic schemas of the REST API live in this package, one module per resource, apart from the SQL
models (app/models.py). Nothing here imports torch.
"""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
)

from darts_core.spec.op_names import DARTS_OP_NAMES
from darts_core.spec.search_spec import (
    reject_nul,
)

# The API validates primitive names against the library's list: one source for the search space.
DARTS_PRIMITIVES: tuple[str, ...] = DARTS_OP_NAMES

ItemT = TypeVar("ItemT")


#: The longest search name, the generated default ('<dataset name> search') included.
MAX_SEARCH_NAME = 200


# Free text from clients: 1 to N characters (checked first, so the message says "characters"), no NUL.
SearchName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_SEARCH_NAME), AfterValidator(reject_nul)
]
UploadId = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(reject_nul)]


class StrictModel(BaseModel):
    """Base of every schema: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")

class Page(StrictModel, Generic[ItemT]):
    """One page of a list; pass `next_cursor` back as `?cursor=` for the next (null on the last)."""

    items: list[ItemT]
    next_cursor: str | None = None

