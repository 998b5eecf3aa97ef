"""A real HTTP server for tests that need one (a browser, the `darts` client in a subprocess), and a
TCP proxy the test controls, to cut connections mid-stream.

- `LiveServer(settings)`: `create_app(settings)` (ingester on) served by uvicorn on a free port, in a
  thread of the test process.
- `CuttingProxy(target)`: forwards a local port to `target` (a TCP port on 127.0.0.1, or a unix socket's
  path); `cut()` closes every open connection at once (as a proxy restart or a dropped network does),
  `close()` also refuses new ones (a host that lost its route); it records what the clients sent.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from app.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, settings: Settings, key: str = "") -> None:
        from app.main import create_app

        self.key = key  # the API key the test's clients use

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings, run_ingester=True), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-server", daemon=True)

    def start(self, timeout: float = 60.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class CuttingProxy:
    def __init__(self, target: int | str) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[bytes] = []  # what clients sent, chunk by chunk (request lines, headers)
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = self._connect_upstream()
            with self._lock:
                if self._closed:  # closed while this one was being accepted: refused
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.target, int):
            return socket.create_connection(("127.0.0.1", self.target))
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(self.target)
        return upstream

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if record:
                    with self._lock:
                        self.requests.append(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> int:
        """Close every connection open now; returns how many sockets were closed."""
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        return len(sockets)

    def close(self) -> None:
        """Cut every connection and refuse new ones."""
        with self._lock:
            self._closed = True
        self.listener.close()
        self.cut()


def client_key(request: object, name: str) -> str:
    """An API key for a client of the live server: a real one from the `make_key` fixture where the
    suite has it (API keys, issue 9), else any string (a server without keys ignores the header)."""
    import pytest

    try:
        make_key = request.getfixturevalue("make_key")  # type: ignore[attr-defined]
    except pytest.FixtureLookupError:
        return f"{name}-key"
    return make_key(name)[1]
