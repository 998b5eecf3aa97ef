"""An HTTP client of darts-service's REST API (httpx), used by the ``darts`` remote commands.

Every request carries ``Authorization: Bearer KEY`` when a key is known. Errors come out as one
exception, :class:`ServiceError`, whose message is one line fit for a terminal: the status and the
API's ``detail`` (a 422's field errors as ``field.path: message``), or why the server could not be
reached. :meth:`DartsClient.follow` reads a search's Server-Sent Events and reconnects with
``Last-Event-ID`` when the stream drops, so no epoch is missed or repeated.

The login (``darts login URL``) is kept in ``login.json`` under the user's config directory
(``DARTS_CONFIG_DIR``, else typer's app dir for "darts"), readable by the user alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx

from darts_core.client.sse import ServerSentEvent, SSEParser, iter_sse
from darts_core.data.archive import tar_stream
from darts_core.spec.artifacts import EXPORT_FILES

__all__ = [
    "DartsClient",
    "Login",
    "ServiceError",
    "TERMINAL_STATUSES",
    "config_dir",
    "load_login",
    "save_login",
    "split_login_url",
]

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
LOGIN_FILE = "login.json"
UPLOAD_CHUNK_BYTES = 256 * 1024


class ServiceError(Exception):
    """A request that failed: `status_code` is the HTTP status, or None when no answer came."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class Login:
    url: str
    token: str | None = None


def config_dir() -> Path:
    """Where `darts login` keeps the login: `DARTS_CONFIG_DIR`, else the user's config dir for darts."""
    override = os.environ.get("DARTS_CONFIG_DIR")
    if override:
        return Path(override)
    import typer  # typer's app dir follows each platform's convention (XDG on Linux)

    return Path(typer.get_app_dir("darts"))


def split_login_url(url: str) -> tuple[str, str | None]:
    """`http://host:8000/?token=KEY` (the URL `darts-service up` prints) -> ("http://host:8000", "KEY").

    A URL without `token` comes back without its trailing slash and a None token.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must look like http://host:port, got {url!r}")
    query = parse_qs(parts.query)
    token = query.pop("token", [None])[0]
    rest = urlencode(query, doseq=True)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), rest, ""))
    return base, token


def save_login(login: Login) -> Path:
    """Write the login to the config dir, readable by the user alone; returns the file."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOGIN_FILE
    temporary = path.with_name(f".{LOGIN_FILE}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump({"url": login.url, "token": login.token}, handle)
    os.replace(temporary, path)
    return path


def load_login(url: str | None = None, token: str | None = None) -> Login | None:
    """The stored login with `url` / `token` (from --url/DARTS_URL, --token/DARTS_TOKEN) overriding it;
    None when there is no URL at all."""
    stored: dict[str, Any] = {}
    path = config_dir() / LOGIN_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
    if url:
        base, url_token = split_login_url(url)
        # Another server than the stored one: the stored key is not for it.
        stored_token = stored.get("token") if base == stored.get("url") else None
        return Login(base, token or url_token or stored_token)
    if not stored.get("url"):
        return None
    return Login(stored["url"], token or stored.get("token"))


def _error_detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # pydantic's 422: [{"loc": [...], "msg": ...}, ...]
        messages = []
        for item in detail:
            if isinstance(item, dict):
                location = [str(part) for part in item.get("loc", []) if part not in ("body", "query")]
                messages.append(f"{'.'.join(location) or 'body'}: {item.get('msg', '')}")
            else:
                messages.append(str(item))
        return "; ".join(messages)
    if detail is not None:
        return detail if isinstance(detail, str) else json.dumps(detail)
    text = " ".join(response.text.split())
    return text[:200] or response.reason_phrase


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(UPLOAD_CHUNK_BYTES):
            yield chunk


class DartsClient:
    """The REST API at `url`, with the key `token`. Use as a context manager (it holds connections)."""

    def __init__(
        self, url: str, token: str | None = None, *, timeout: float = 30.0, transport: Any = None
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> DartsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ plumbing

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """Send a request; a status >= 400 or no answer raises ServiceError with a one-line message."""
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as error:
            raise ServiceError(f"cannot reach {self.url}: {error or type(error).__name__}") from None
        self._raise_for_status(method, path, response)
        return response

    @staticmethod
    def _raise_for_status(method: str, path: str, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        if not response.is_closed:
            response.read()
        hint = " (is the key right? `darts login URL` or --token)" if response.status_code == 401 else ""
        message = f"{method} {path}: HTTP {response.status_code}: {_error_detail(response)}{hint}"
        raise ServiceError(message, response.status_code)

    def _json(self, method: str, path: str, **options: Any) -> Any:
        response = self.request(method, path, **options)
        return None if response.status_code == 204 else response.json()

    def _page(self, path: str, *, status: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        """One page of a collection (``{"items", "next_cursor"}``), optionally filtered by status."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self._json("GET", path, params=params)

    def _every_item(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated collection, following ``next_cursor`` to the last page."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self._json("GET", path, params=(params or {}) | ({"cursor": cursor} if cursor else {}))
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    # ------------------------------------------------------------------ searches

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/searches", json=spec)

    def estimate(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/searches/estimate", json=spec)

    def list_searches(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        return self._page("/searches", status=status, limit=limit, cursor=cursor)

    def get_search(self, search_id: str) -> dict[str, Any]:
        return self._json("GET", f"/searches/{search_id}")

    def epochs(self, search_id: str) -> list[dict[str, Any]]:
        return self._every_item(f"/searches/{search_id}/epochs")

    def genotype(self, search_id: str, epoch: int | None = None) -> dict[str, Any]:
        params = {"epoch": epoch} if epoch else {}
        return self._json("GET", f"/searches/{search_id}/genotype", params=params)

    def genotype_svg(self, search_id: str, epoch: int | None = None) -> str:
        params = {"epoch": epoch} if epoch else {}
        return self.request("GET", f"/searches/{search_id}/genotype.svg", params=params).text

    def cancel(self, search_id: str) -> dict[str, Any]:
        return self._json("POST", f"/searches/{search_id}/cancel")

    def delete(self, search_id: str) -> None:
        self.request("DELETE", f"/searches/{search_id}")

    # ------------------------------------------------------------------ trainings

    def submit_training(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/trainings", json=spec)

    def list_trainings(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        return self._page("/trainings", status=status, limit=limit, cursor=cursor)

    def get_training(self, training_id: str) -> dict[str, Any]:
        return self._json("GET", f"/trainings/{training_id}")

    def training_epochs(self, training_id: str) -> list[dict[str, Any]]:
        return self._every_item(f"/trainings/{training_id}/epochs")

    def cancel_training(self, training_id: str) -> dict[str, Any]:
        return self._json("POST", f"/trainings/{training_id}/cancel")

    def delete_training(self, training_id: str) -> None:
        self.request("DELETE", f"/trainings/{training_id}")

    def download_weights(self, training_id: str, path: Path) -> int:
        """Stream the trained weights (safetensors) of a succeeded training to `path`; returns the bytes
        written. Written beside `path` first and renamed, so `path` is never half a file."""
        return self._download(f"/trainings/{training_id}/weights", path)

    def download_model(self, training_id: str, format: str, path: Path) -> int:
        """As `download_weights`, the server's export of the trained network: `format` "onnx"
        (`model.onnx`) or "torchscript" (`model.pt`)."""
        return self._download(f"/trainings/{training_id}/{EXPORT_FILES[format]}", path)

    def _download(self, route: str, path: Path) -> int:
        partial = path.with_name(f".{path.name}.partial")
        try:
            with self._http.stream("GET", route) as response:
                self._raise_for_status("GET", route, response)
                written = 0
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                        written += len(chunk)
        except httpx.TransportError as error:
            partial.unlink(missing_ok=True)
            raise ServiceError(f"cannot reach {self.url}: {error or type(error).__name__}") from None
        except ServiceError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, path)
        return written

    # ------------------------------------------------------------------ studies

    def submit_study(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/studies", json=spec)

    def list_studies(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        return self._page("/studies", status=status, limit=limit, cursor=cursor)

    def get_study(self, study_id: str) -> dict[str, Any]:
        return self._json("GET", f"/studies/{study_id}")

    def cancel_study(self, study_id: str) -> dict[str, Any]:
        return self._json("POST", f"/studies/{study_id}/cancel")

    # ------------------------------------------------------------------ datasets

    def datasets(self) -> list[dict[str, Any]]:
        return self._every_item("/datasets", {"limit": 500})

    def upload(
        self,
        path: Path,
        *,
        name: str | None = None,
        progress: Callable[[int], None] | None = None,
        image_size: int | None = None,
        channels: int | None = None,
    ) -> dict[str, Any]:
        """Stream the `.npz` or archive at `path`, or the folder `path` packed as a tar on the fly (raw
        body, so nothing is buffered and no temporary file written); `progress(bytes)` per chunk.
        `image_size`, `channels`: how the server decodes an archive's images."""
        if path.is_dir():
            filename, pieces, headers = f"{path.name}.tar", tar_stream(path), {}
        else:
            filename, pieces = path.name, _file_chunks(path)
            headers = {"Content-Length": str(path.stat().st_size)}

        def chunks() -> Iterator[bytes]:
            for chunk in pieces:
                yield chunk
                if progress is not None:
                    progress(len(chunk))

        params: dict[str, str | int] = {"filename": filename}
        for key, value in (("name", name), ("image_size", image_size), ("channels", channels)):
            if value:
                params[key] = value
        headers["Content-Type"] = "application/octet-stream"
        return self._json("POST", "/datasets", params=params, headers=headers, content=chunks())

    # ------------------------------------------------------------------ events

    def events(
        self, search_id: str, last_event_id: str | None = None, *, collection: str = "searches"
    ) -> Iterator[ServerSentEvent]:
        """One connection to `/{collection}/{id}/events` (collection: "searches" or "trainings"); ends
        when the server ends it (or it drops: httpx raises then)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        path = f"/{collection}/{search_id}/events"
        timeout = httpx.Timeout(10.0, read=60.0)  # the server pings every 15 s
        with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            self._raise_for_status("GET", path, response)
            yield from iter_sse(response.iter_lines(), SSEParser(last_event_id))

    def follow(
        self,
        search_id: str,
        *,
        reconnect_for: float = 120.0,
        on_reconnect: Callable[[str | None, str], None] | None = None,
        collection: str = "searches",
    ) -> Iterator[ServerSentEvent]:
        """Every `epoch` and `status` event of a search (or, with collection="trainings", a training)
        until it ends, across dropped connections.

        When the stream drops (or ends before a terminal status), reconnects with the last event id
        seen, backing off up to 5 s; gives up with ServiceError after `reconnect_for` seconds without
        a connection. `on_reconnect(last_event_id, reason)` is told of each reconnection.
        """
        last_event_id: str | None = None
        failing_since: float | None = None
        delay = 0.2
        while True:
            reason = "the server ended the stream early"
            try:
                for event in self.events(search_id, last_event_id, collection=collection):
                    failing_since, delay = None, 0.2
                    if event.id is not None:
                        last_event_id = event.id
                    yield event
                    if event.event == "status" and event.json().get("status") in TERMINAL_STATUSES:
                        return
            except httpx.TransportError as error:
                reason = f"connection lost ({type(error).__name__})"
            except ServiceError as error:
                if error.status_code is not None and error.status_code < 500:
                    raise
                reason = str(error)
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > reconnect_for:
                raise ServiceError(f"the event stream of {search_id} could not be resumed: {reason}")
            if on_reconnect is not None:
                on_reconnect(last_event_id, reason)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
