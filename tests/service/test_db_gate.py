"""app.db_gate: requests beyond the pool's connections wait on the event loop; /healthz never waits."""

from __future__ import annotations

import anyio

from app.db_gate import DatabaseGate
from app.http.db_gate import DatabaseGateMiddleware


def test_a_full_gate_holds_database_requests_but_not_the_liveness_check() -> None:
    async def scenario() -> list[str]:
        gate = DatabaseGate(1)
        answered: list[str] = []

        async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            answered.append(scope["path"])

        middleware = DatabaseGateMiddleware(app, gate)

        async def request(path: str) -> None:
            async def receive() -> dict[str, object]:
                return {"type": "http.request", "body": b""}

            async def send(message: object) -> None:
                return None

            await middleware({"type": "http", "method": "GET", "path": path}, receive, send)

        await gate.semaphore.acquire()  # every slot is taken by work in progress
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(request, "/searches")
            while gate.semaphore.statistics().tasks_waiting == 0:
                await anyio.sleep(0)
            with anyio.fail_after(10):  # a gated /healthz would wait here for good
                await request("/healthz")  # answered while /searches still waits at the gate
            assert answered == ["/healthz"]
            gate.semaphore.release()
        return answered

    assert anyio.run(scenario) == ["/healthz", "/searches"]
