"""app.services.read_cache and the polled reads: one build per key at a time, answers kept for their
time and no longer, writes through the API seen at once, owners checked on every answer, and the gates
never waiting on each other."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.events.changes import announce_change
from app.models import ApiKey, Search
from app.services import keys as key_service
from app.services.read_cache import ReadCache

DIGITS = {"dataset": {"name": "digits"}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl"):
        ReadCache(-1.0)
    with pytest.raises(ValueError, match="max_entries"):
        ReadCache(1.0, max_entries=0)


def test_a_key_is_built_once_for_all_who_ask_at_once_and_kept_for_its_time() -> None:
    clock = Clock()
    cache: ReadCache[int] = ReadCache(0.5, clock=clock)
    calls = 0

    async def build() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return calls

    async def scenario() -> list[int]:
        together = await asyncio.gather(*(cache.get("k", build) for _ in range(50)))
        clock.now += 0.4
        kept = await cache.get("k", build)
        clock.now += 0.2  # past the half second
        rebuilt = await cache.get("k", build)
        return [*set(together), kept, rebuilt]

    assert asyncio.run(scenario()) == [1, 1, 2]
    assert cache.builds == 2 and cache.peek("k") == 2
    clock.now += 1
    assert cache.peek("k") is None


def test_a_failed_build_is_not_kept_and_every_waiter_gets_its_error() -> None:
    cache: ReadCache[int] = ReadCache(10.0)
    attempts = 0

    async def failing() -> int:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        raise LookupError("no such job")

    async def scenario() -> list[object]:
        return await asyncio.gather(*(cache.get("k", failing) for _ in range(5)), return_exceptions=True)

    results = asyncio.run(scenario())
    assert attempts == 1 and all(isinstance(r, LookupError) for r in results)
    assert len(cache) == 0

    async def ok() -> int:
        return 7

    assert asyncio.run(cache.get("k", ok)) == 7  # the next request tries again


def test_a_build_begun_before_an_invalidation_is_answered_but_not_kept() -> None:
    cache: ReadCache[str] = ReadCache(10.0)

    async def scenario() -> tuple[str, str, str]:
        started = asyncio.Event()
        release = asyncio.Event()

        async def old_read() -> str:
            started.set()
            await release.wait()
            return "running"  # read before the cancel committed

        async def new_read() -> str:
            return "cancelling"

        first = asyncio.create_task(cache.get(("searches", "s1", None), old_read))
        await started.wait()
        cache.invalidate(lambda key: key[1] == "s1")  # the cancel, from another thread in the API
        # A request after the write does not join the read begun before it.
        after = await cache.get(("searches", "s1", None), new_read)
        release.set()
        return await first, after, await cache.get(("searches", "s1", None), old_read)

    assert asyncio.run(scenario()) == ("running", "cancelling", "cancelling")


def test_a_cancelled_builder_hands_the_build_to_a_waiter() -> None:
    cache: ReadCache[str] = ReadCache(10.0)

    async def scenario() -> str:
        started = asyncio.Event()

        async def slow() -> str:
            started.set()
            await asyncio.sleep(10)
            return "never"

        async def quick() -> str:
            return "built by the waiter"

        builder = asyncio.create_task(cache.get("k", slow))
        await started.wait()
        waiter = asyncio.create_task(cache.get("k", quick))
        await asyncio.sleep(0)
        builder.cancel()
        return await asyncio.wait_for(waiter, 5)

    assert asyncio.run(scenario()) == "built by the waiter"


def test_entries_are_bounded_and_expired_ones_dropped_oldest_first() -> None:
    clock = Clock()
    cache: ReadCache[int] = ReadCache(1.0, max_entries=2, clock=clock)

    async def put(key: str) -> None:
        await cache.get(key, lambda: asyncio.sleep(0, result=ord(key)))

    async def scenario() -> None:
        await put("a")
        await put("b")
        await put("c")  # past max_entries: the oldest build goes
        assert (cache.peek("a"), cache.peek("b"), cache.peek("c")) == (None, ord("b"), ord("c"))
        clock.now += 2  # both expired, still held until the next insert
        await put("d")
        assert len(cache) == 1 and cache.peek("d") == ord("d")

    asyncio.run(scenario())


def test_polls_are_answered_from_memory_and_writes_through_the_api_seen_at_once(
    app_client, make_key, session_factory: sessionmaker[Session]
) -> None:
    """With answers kept for a minute: a row changed behind the API's back stays as it was, the API's
    own cancel is seen by the next poll, another owner gets 404 from the kept answer, and the key cache
    answers polls without SQL while a revoked key is refused once its time has passed."""
    api = app_client(read_cache_seconds=60.0, key_cache_seconds=0.5)
    name, key = make_key()
    owner = {"Authorization": f"Bearer {key}"}
    created = api.post("/searches", json=DIGITS, headers=owner)
    assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    first = api.get(f"/searches/{search_id}", headers=owner)
    assert first.status_code == 200 and first.json()["status"] == "queued"
    assert first.headers["x-request-id"]
    epochs = api.get(f"/searches/{search_id}/epochs", headers=owner)
    assert epochs.json() == {"items": [], "next_cursor": None}

    with session_factory() as session:  # a change the API did not make: kept answers stand
        session.get(Search, search_id).name = "renamed behind the API"
        session.commit()
    assert api.get(f"/searches/{search_id}", headers=owner).json() == first.json()

    builds = api.app.state.read_cache.builds
    for _ in range(20):
        assert api.get(f"/searches/{search_id}", headers=owner).status_code == 200
    assert api.app.state.read_cache.builds == builds  # twenty polls, no read of SQL

    other = {"Authorization": f"Bearer {make_key()[1]}"}
    for path in (f"/searches/{search_id}", f"/searches/{search_id}/epochs"):
        hidden = api.get(path, headers=other)
        assert hidden.status_code == 404 and hidden.json() == {"detail": f"search {search_id!r} not found"}
    assert api.get(f"/searches/{search_id}").status_code == 401

    cancelled = api.post(f"/searches/{search_id}/cancel", headers=owner)
    assert cancelled.status_code == 202
    now = api.get(f"/searches/{search_id}", headers=owner).json()
    assert now["status"] == "cancelled" and now["name"] == "renamed behind the API"

    with session_factory() as session:
        key_service.revoke_key(session, name)
        assert session.query(ApiKey).filter_by(name=name).one().revoked_at is not None
    time.sleep(0.5 + 0.2)  # past the key's half second, with room for the clock's granularity
    assert api.get(f"/searches/{search_id}", headers=owner).status_code == 401


def test_polls_need_no_slot_of_the_request_gate(app_client, make_key) -> None:
    """Every slot of the request gate taken (a burst of submissions at work): a poll is still answered,
    its key looked up and its answer built under gates of their own. Requests holding request slots may
    all be waiting for one key's lookup, so a lookup needing one of their slots hung the API under
    issue 10's burst; a poll's build queued behind the burst made every follower wait seconds."""
    api: TestClient = app_client(key_cache_seconds=5.0, read_cache_seconds=5.0)
    key = make_key()[1]
    headers = {"Authorization": f"Bearer {key}"}
    search_id = api.post("/searches", json=DIGITS, headers=headers).json()["id"]

    async def scenario() -> tuple[int, int]:
        import httpx

        gate = api.app.state.db_gate
        for _ in range(gate.slots):  # every slot taken by requests at work
            await gate.semaphore.acquire()
        try:
            transport = httpx.ASGITransport(app=api.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                poll = client.get(f"/searches/{search_id}", headers=headers)
                epochs = client.get(f"/searches/{search_id}/epochs", headers=headers)
                answers = await asyncio.wait_for(asyncio.gather(poll, epochs), 20)
        finally:
            for _ in range(gate.slots):
                gate.semaphore.release()
        return answers[0].status_code, answers[1].status_code

    assert asyncio.run(scenario()) == (200, 200)
    assert api.app.state.key_cache.peek(key_service.hash_key(key)) is not None


def test_an_announced_change_drops_the_kept_answer(app_client, make_key, session_factory) -> None:
    """The ingester announces each stored event's job (app.events.changes): the API's kept answer about
    it goes at once, long before READ_CACHE_SECONDS (a minute here)."""
    api = app_client(read_cache_seconds=60.0)
    headers = {"Authorization": f"Bearer {make_key()[1]}"}
    search_id = api.post("/searches", json=DIGITS, headers=headers).json()["id"]
    assert api.get(f"/searches/{search_id}", headers=headers).json()["name"] != "renamed"
    with session_factory() as session:
        session.get(Search, search_id).name = "renamed"
        session.commit()
    listener = api.app.state.change_listener
    deadline = time.monotonic() + 20
    while listener.received == 0:  # subscribed once an announcement gets through
        announce_change(api.app.state.redis, api.app.state.settings, search_id)
        assert time.monotonic() < deadline, "no announcement reached the API"
        time.sleep(0.05)
    assert api.get(f"/searches/{search_id}", headers=headers).json()["name"] == "renamed"


def test_the_fast_path_reads_the_key_as_the_routes_do(app_client, make_key) -> None:
    """A kept answer is served only for a request whose one `Authorization` header names a kept key; two
    headers (a proxy appending its own) go to the routes, which read the first, as HTTPBearer does."""
    api = app_client(read_cache_seconds=60.0, key_cache_seconds=60.0)
    key = make_key()[1]
    search_id = api.post("/searches", json=DIGITS, headers={"Authorization": f"Bearer {key}"}).json()["id"]
    assert api.get(f"/searches/{search_id}", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    two = [("authorization", "Bearer dsk_not-a-key"), ("authorization", f"Bearer {key}")]
    response = api.get(f"/searches/{search_id}", headers=httpx_headers(two))
    assert response.status_code == 401
    spaced = api.get(f"/searches/{search_id}", headers={"Authorization": f"bearer   {key}  "})
    assert spaced.status_code == 200  # HTTPBearer's split: scheme case-insensitive, token stripped
    malformed = api.get(f"/searches/{search_id}", headers={"Authorization": "Bearer " + "x" * 100})
    assert malformed.status_code == 401
    assert api.app.state.key_cache.peek(key_service.hash_key("x" * 100)) is None  # never looked up


def httpx_headers(pairs: list[tuple[str, str]]) -> object:
    import httpx

    return httpx.Headers(pairs)
