"""Logs: one formatter for every logger, the search id, attempt and request id on every line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.logging_config import bind_log_context, clear_log_context, configure_logging, log_context
from app.main import create_app
from app.settings import Settings


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record of the process as JSON lines in a buffer for the test; stderr again afterwards."""
    buffer = io.StringIO()
    configure_logging("INFO", "json", stream=buffer)
    try:
        yield buffer
    finally:
        clear_log_context()
        configure_logging("INFO")


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_every_line_is_json_with_the_context_keys(json_lines: io.StringIO) -> None:
    logging.getLogger("darts.test").info("plain %s", "line")
    with log_context(search_id="s-1", attempt=2):
        logging.getLogger("darts.test").warning("in a search", extra={"epoch": 3})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("darts.test").exception("failed")
    plain, in_search, failed = lines(json_lines)
    assert plain["message"] == "plain line" and plain["level"] == "INFO" and plain["logger"] == "darts.test"
    assert (plain["search_id"], plain["attempt"], plain["request_id"]) == (None, None, None)
    assert (in_search["search_id"], in_search["attempt"], in_search["epoch"]) == ("s-1", 2, 3)
    assert "RuntimeError: boom" in failed["exc_info"] and failed["search_id"] == "s-1"


def test_uvicorn_and_celery_loggers_go_through_the_same_formatter(json_lines: io.StringIO) -> None:
    # What uvicorn and Celery do when they configure themselves: a handler of their own, and (uvicorn's
    # dictConfig with disable_existing_loggers, run by any in-process server) loggers switched off.
    for name in ("uvicorn.access", "celery.worker"):
        logging.getLogger(name).addHandler(logging.StreamHandler(io.StringIO()))
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # uvicorn's --log-level warning
    configure_logging("INFO", "json", stream=json_lines)
    bind_log_context(search_id="s-2", attempt=1, request_id="r-1")
    logging.getLogger("uvicorn.access").info("GET /searches 200")
    logging.getLogger("celery.worker").info("Task received")
    for line in lines(json_lines):
        assert (line["search_id"], line["attempt"], line["request_id"]) == ("s-2", 1, "r-1")
    assert [line["logger"] for line in lines(json_lines)] == ["uvicorn.access", "celery.worker"]
    assert all(not logging.getLogger(name).handlers for name in ("uvicorn.access", "celery.worker"))


def test_text_format_is_readable_and_bad_formats_are_refused() -> None:
    buffer = io.StringIO()
    configure_logging("INFO", "text", stream=buffer)
    try:
        with log_context(search_id="s-3", attempt=1):
            logging.getLogger("darts.test").info("hello")
        assert buffer.getvalue().rstrip().endswith("INFO darts.test [search=s-3 attempt=1]: hello")
        with pytest.raises(ValueError, match="LOG_FORMAT"):
            configure_logging("INFO", "xml", stream=buffer)
    finally:
        configure_logging("INFO")


def test_a_request_logs_with_its_request_id_and_search_id(
    json_lines: io.StringIO, api_settings: Settings, auth_headers: dict[str, str]
) -> None:
    # Redis is down: POST /searches logs that it could not enqueue, inside the request.
    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as client:
        response = client.post("/searches", json={"dataset": {"name": "digits"}},
                               headers={"X-Request-ID": "req-from-client-1"})
        assert response.status_code == 503
        assert response.headers["x-request-id"] == "req-from-client-1"
        made_up = client.get("/searches/abc", headers={"X-Request-ID": "bad id with spaces"})
        assert made_up.headers["x-request-id"] != "bad id with spaces"
        assert len(made_up.headers["x-request-id"]) == 32
    enqueue = [line for line in lines(json_lines) if "could not enqueue" in line["message"]]
    assert enqueue and enqueue[0]["request_id"] == "req-from-client-1"
    assert enqueue[0]["level"] == "WARNING"


def test_the_search_id_of_the_route_is_bound_during_the_request(json_lines: io.StringIO, client) -> None:
    seen: dict[str, str | None] = {}

    @client.app.get("/searches/{search_id}/_probe")
    def probe(search_id: str) -> dict:
        logging.getLogger("darts.test").info("probe")
        return {}

    client.get("/searches/s-42/_probe", headers={"X-Request-ID": "r-42"})
    probe_line = next(line for line in lines(json_lines) if line["message"] == "probe")
    seen.update(search_id=probe_line["search_id"], request_id=probe_line["request_id"])
    assert seen == {"search_id": "s-42", "request_id": "r-42"}
