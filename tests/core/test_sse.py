"""darts_core.client.sse: the text/event-stream parser the client, the demo and the tests share."""

from __future__ import annotations

from darts_core.client.sse import ServerSentEvent, SSEParser, iter_sse


def test_events_fields_comments_and_sticky_ids() -> None:
    stream = [
        ": ping",
        "event: epoch",
        "id: 17-0",
        'data: {"epoch": 1,',
        'data: "x": 2}',
        "",
        "event: status",
        "data:no space",
        "",
        "",  # a second blank line dispatches nothing
        "retry: 3000",
        "id",  # a field with no colon: an empty id
        "data",
        "",
    ]
    events = list(iter_sse(stream))
    assert events == [
        ServerSentEvent("epoch", '{"epoch": 1,\n"x": 2}', "17-0"),
        ServerSentEvent("status", "no space", "17-0"),
        ServerSentEvent("message", "", "", 3000),
    ]
    assert events[0].json() == {"epoch": 1, "x": 2}


def test_line_endings_nul_ids_dataless_blocks_and_a_cut_stream() -> None:
    parser = SSEParser(last_event_id="5-0")
    assert parser.feed("id: bad\0id\r\n") is None
    assert parser.feed("event: status\r\n") is None
    assert parser.feed("\r\n") is None  # no data: nothing dispatched, the event name is dropped
    assert parser.feed("data: 1\r\n") is None
    assert parser.feed("\r\n") == ServerSentEvent("message", "1", "5-0")
    assert list(iter_sse(["data: never finished"])) == []
