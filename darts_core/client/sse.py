"""A Server-Sent Events parser (the WHATWG `text/event-stream` format), with no I/O of its own.

Feed it the lines of a response (e.g. ``httpx.Response.iter_lines()``); it yields one
:class:`ServerSentEvent` per blank-line-terminated block that carries data. It keeps the last event id
across events, as a browser's ``EventSource`` does, so a client that reconnects can send it back as
``Last-Event-ID``. Shared by the ``darts`` client, the service demo and the tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["SSEParser", "ServerSentEvent", "iter_sse"]


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: `event` ("message" unless named), `data` (lines joined by "\\n"), and the
    stream's last event `id` at dispatch time (None if no event has carried one)."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """`data` decoded as JSON."""
        return json.loads(self.data)


class SSEParser:
    """Incremental parser: :meth:`feed` one line at a time (without its line ending)."""

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        """Consume `line`; return the event a blank line completes, else None."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment, e.g. a keep-alive ping
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:  # the standard ignores ids with NUL
                self.last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event=event, data="\n".join(data), id=self.last_event_id, retry=self.retry)


def iter_sse(lines: Iterable[str], parser: SSEParser | None = None) -> Iterator[ServerSentEvent]:
    """The events of `lines`. An unterminated last block (a cut stream) is not dispatched."""
    parser = parser or SSEParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
