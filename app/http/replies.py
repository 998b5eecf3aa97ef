"""The JSON answers the middleware sends itself, before any route (and FastAPI's handlers) runs."""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.types import Send


async def send_json(
    send: Send, status: int, body: object, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
