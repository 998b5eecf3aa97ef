"""Opaque keyset cursors for newest-first lists ordered by (created_at, id)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from app.services.errors import BadRequest


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """The cursor that continues a newest-first list after the row (created_at, row_id)."""
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, row_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        moment = datetime.fromisoformat(created_at)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"invalid cursor {cursor!r}: pass back a next_cursor this API returned") from exc
    if moment.tzinfo is None or not row_id:
        raise BadRequest(f"invalid cursor {cursor!r}: pass back a next_cursor this API returned")
    return moment, row_id


def older_than(
    created_at_column: InstrumentedAttribute[datetime], id_column: InstrumentedAttribute[str], cursor: str
) -> ColumnElement[bool]:
    """SQL condition: rows after the cursor in (created_at DESC, id DESC) order."""
    created_at, row_id = decode_cursor(cursor)
    return or_(created_at_column < created_at, and_(created_at_column == created_at, id_column < row_id))
