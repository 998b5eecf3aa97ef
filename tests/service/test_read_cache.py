"""app.services.read_cache and the polled reads: one build per key at a time, answers kept for their
time and no longer, writes through the API seen at once, owners checked on every answer, and the gates
never waiting on each other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.events.changes import announce_change
from app.models import ApiKey, Search
from app.services import keys as key_service
from app.services.read_cache import ReadCache

from .conftest import GENOTYPE_TEMPLATE

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
    with pytest.raises(ValueError, match="weigh and max_weight"):
        ReadCache(1.0, max_weight=10)
    with pytest.raises(ValueError, match="max_weight"):
        ReadCache(1.0, weigh=len, max_weight=-1)


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
    """The waiter builds with its own `build` and keeps its `rebuild` with the value (renewable)."""
    background = Background()
    cache: ReadCache[str] = ReadCache(10.0, renew_in=background)

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
        waiter = asyncio.create_task(cache.get("k", quick, rebuild=lambda: "renewed"))
        await asyncio.sleep(0)
        builder.cancel()
        return await asyncio.wait_for(waiter, 5)

    assert asyncio.run(scenario()) == "built by the waiter"
    assert cache.peek("k") == "built by the waiter"
    cache.renew(lambda key: True)
    background.run()
    assert cache.peek("k") == "renewed"


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


def test_what_is_kept_weighs_at_most_max_weight_and_a_heavier_value_is_not_kept() -> None:
    """Pages of epochs are kept whatever page a client asks for, so the bound is on their bytes: the
    oldest go until what is kept fits, a value heavier than the whole budget is answered but not kept,
    and a key built again or dropped counts only its latest value."""
    cache: ReadCache[bytes] = ReadCache(60.0, weigh=len, max_weight=10)

    def put(key: str, value: bytes) -> bytes:
        async def build() -> bytes:
            return value

        return asyncio.run(cache.get(key, build))

    put("a", b"aaaa")
    put("b", b"bbbb")
    assert cache.weight == 8
    put("c", b"cccc")  # 12 > 10: the oldest goes
    assert (cache.peek("a"), cache.peek("b"), cache.peek("c")) == (None, b"bbbb", b"cccc")
    assert cache.weight == 8
    assert put("huge", b"x" * 11) == b"x" * 11  # answered ...
    assert cache.peek("huge") is None and cache.weight == 8  # ... not kept, nothing else dropped
    cache.invalidate(lambda key: key == "b")
    assert cache.weight == 4
    cache.clear()
    assert cache.weight == 0 and len(cache) == 0


class Background:
    """A `renew_in` that holds the work until the test runs it: the moment between a renewal's start
    and its end, made as long as a test needs."""

    def __init__(self) -> None:
        self.work: list[Callable[[], None]] = []

    def __call__(self, work: Callable[[], None]) -> None:
        self.work.append(work)

    def run(self) -> None:
        work, self.work = self.work, []
        for item in work:
            item()


def kept(
    cache: ReadCache[str], key: str, value: str, rebuild: Callable[[], str] | None, *, polled: bool = True
) -> None:
    """`value` built for `key` and kept; then read by a poll, unless `polled` is false."""

    async def build() -> str:
        return value

    assert asyncio.run(cache.get(key, build, rebuild=rebuild)) == value
    if polled:
        assert cache.peek(key) == value


def test_a_renewal_answers_the_old_value_until_the_new_one_is_built() -> None:
    clock = Clock()
    background = Background()
    cache: ReadCache[str] = ReadCache(1.0, clock=clock, renew_in=background)
    kept(cache, "k", "epoch 3", rebuild=lambda: "epoch 4")
    kept(cache, "other", "untouched", rebuild=lambda: "rebuilt by mistake")
    clock.now += 0.9
    cache.renew(lambda key: key == "k")
    assert cache.peek("k") == "epoch 3" and len(background.work) == 1  # polls meanwhile: no miss
    background.run()
    assert cache.peek("k") == "epoch 4" and cache.peek("other") == "untouched"
    assert (cache.builds, cache.renewals) == (2, 1)
    clock.now += 0.9  # kept for its whole time from the renewal, not from the first build
    assert cache.peek("k") == "epoch 4"
    clock.now += 0.2
    assert cache.peek("k") is None


def test_what_cannot_be_renewed_is_forgotten() -> None:
    """A value nobody asked for since it was built, an expired value, a value kept without a rebuild, a
    cache without `renew_in`, and a rebuild that fails: each is forgotten, so that the next poll builds
    it again (and meets the error itself), and nothing nobody reads is read from SQL at every change."""
    clock = Clock()
    background = Background()
    cache: ReadCache[str] = ReadCache(1.0, max_entries=10, clock=clock, renew_in=background)
    kept(cache, "expired", "b", rebuild=lambda: "never asked")
    clock.now += 0.6
    kept(cache, "not polled", "a", rebuild=lambda: "never asked", polled=False)
    kept(cache, "no rebuild", "a", rebuild=None)
    kept(cache, "failing", "c", rebuild=lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    clock.now += 0.5  # "expired" is past its second, still held (nothing was inserted since)
    assert len(cache) == 4
    cache.renew(lambda key: True)
    assert len(cache) == 1 and cache.peek("failing") == "c" and len(background.work) == 1
    background.run()
    assert cache.peek("failing") is None and cache.renewals == 0

    plain: ReadCache[str] = ReadCache(1.0)
    kept(plain, "k", "a", rebuild=lambda: "b")
    plain.renew(lambda key: True)
    assert plain.peek("k") is None


def test_an_invalidation_or_a_later_renewal_wins_over_a_renewal_under_way() -> None:
    """A write through the API (invalidate) during a renewal: the renewal, read maybe before the write,
    is not kept. Two renewals under way: only the later one's value is kept, whatever order they end in."""
    background = Background()
    cache: ReadCache[str] = ReadCache(10.0, renew_in=background)
    kept(cache, "k", "running", rebuild=lambda: "read before the cancel")
    cache.renew(lambda key: True)
    cache.invalidate(lambda key: True)
    background.run()
    assert cache.peek("k") is None and cache.renewals == 0

    reads: list[str] = []

    def rebuild() -> str:
        reads.append("read")
        return f"renewal {len(reads)}"

    kept(cache, "k", "epoch 1", rebuild=rebuild)
    cache.renew(lambda key: True)
    first = background.work.pop()
    cache.renew(lambda key: True)
    background.run()  # the later renewal ends first
    first()  # the earlier one, queued until now: skipped without reading
    assert cache.peek("k") == "renewal 1" and cache.renewals == 1 and reads == ["read"]


def test_a_build_begun_before_a_renewal_is_answered_but_not_kept() -> None:
    """A poll's build under way when another process announces a change may have read before it: its
    requests get it, but it is not kept (the next poll builds again)."""
    background = Background()
    cache: ReadCache[str] = ReadCache(10.0, renew_in=background)

    async def scenario() -> str:
        started = asyncio.Event()
        release = asyncio.Event()

        async def old_read() -> str:
            started.set()
            await release.wait()
            return "epoch 1"

        build = asyncio.create_task(cache.get("k", old_read, rebuild=lambda: "epoch 2"))
        await started.wait()
        cache.renew(lambda key: True)
        release.set()
        return await build

    assert asyncio.run(scenario()) == "epoch 1"
    assert cache.peek("k") is None and background.work == []


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


def test_an_announced_change_renews_the_kept_answer(app_client, make_key, session_factory) -> None:
    """The ingester announces each stored event's job (app.events.changes): the API's kept answer about
    it is built again in the background at once, long before READ_CACHE_SECONDS (a minute here), and the
    next poll gets the new one from memory, with no build of its own."""
    api = app_client(read_cache_seconds=60.0)
    headers = {"Authorization": f"Bearer {make_key()[1]}"}
    search_id = api.post("/searches", json=DIGITS, headers=headers).json()["id"]
    for _ in range(2):  # built, then read from memory: a kept answer clients poll
        assert api.get(f"/searches/{search_id}", headers=headers).json()["name"] != "renamed"
    with session_factory() as session:
        session.get(Search, search_id).name = "renamed"
        session.commit()
    cache = api.app.state.read_cache
    builds = cache.builds
    deadline = time.monotonic() + 20
    while cache.renewals == 0:  # the listener is subscribed once an announcement gets through
        announce_change(api.app.state.redis, api.app.state.settings, search_id)
        assert time.monotonic() < deadline, "no announcement renewed the kept answer"
        time.sleep(0.05)
    assert api.get(f"/searches/{search_id}", headers=headers).json()["name"] == "renamed"
    assert cache.builds == builds  # renewed in the background; the poll was answered from memory


def test_an_announced_write_through_another_api_process_drops_the_kept_answer(
    app_client, make_key, session_factory
) -> None:
    """A cancel or delete in another API process is announced as written: this one drops what it keeps
    (a renewal would answer the state before the write until it is rebuilt), and the next poll builds."""
    api = app_client(read_cache_seconds=60.0)
    headers = {"Authorization": f"Bearer {make_key()[1]}"}
    search_id = api.post("/searches", json=DIGITS, headers=headers).json()["id"]
    for _ in range(2):  # built, then read from memory
        assert api.get(f"/searches/{search_id}", headers=headers).json()["status"] == "queued"
    with session_factory() as session:  # the other process's cancel
        session.get(Search, search_id).status = "cancelled"
        session.commit()
    cache = api.app.state.read_cache
    listener = api.app.state.change_listener
    deadline = time.monotonic() + 20
    while cache.peek(("searches", search_id, None)) is not None:
        announce_change(api.app.state.redis, api.app.state.settings, search_id, written=True)
        assert time.monotonic() < deadline, "no announcement of the write reached the API"
        time.sleep(0.05)
    assert listener.received >= 1 and cache.renewals == 0
    assert api.get(f"/searches/{search_id}", headers=headers).json()["status"] == "cancelled"


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


def test_the_api_exempts_what_it_imported_from_full_collections(app_client) -> None:
    """Once the API has imported torch for its estimates, what was alive then is frozen (`gc.freeze`):
    the collector's full collections, once a second under 100 pollers, no longer traverse 270,000
    objects (160-175 ms each, the event loop answering nothing meanwhile)."""
    import gc

    app_client()
    deadline = time.monotonic() + 60
    while gc.get_freeze_count() < 100_000:
        assert time.monotonic() < deadline, f"{gc.get_freeze_count()} objects frozen after 60 s"
        time.sleep(0.1)


def test_the_change_listener_outlives_a_failing_action_and_reads_written_changes(app_client) -> None:
    """An action that raises (a bug, not Redis) is logged, and the listener goes on without dropping its
    subscription: the next announcement, of a write, arrives marked as one."""
    from app.events.changes import ChangeListener

    api = app_client()
    seen: list[tuple[str, bool]] = []

    def on_change(job_id: str, written: bool) -> None:
        seen.append((job_id, written))
        if job_id == "poison":
            raise RuntimeError("a bug in the action")

    redis_client, settings = api.app.state.redis, api.app.state.settings
    listener = ChangeListener(redis_client, settings, on_change).start()
    try:
        deadline = time.monotonic() + 20
        while ("poison", False) not in seen:  # subscribed once an announcement gets through
            announce_change(redis_client, settings, "poison")
            assert time.monotonic() < deadline, "no announcement reached the listener"
            time.sleep(0.05)
        announce_change(redis_client, settings, "next", written=True)
        while ("next", True) not in seen:
            assert time.monotonic() < deadline, f"the next announcement never came: {seen}"
            time.sleep(0.05)
        assert listener.reconnects == 0
    finally:
        listener.stop()


@pytest.mark.parametrize(
    ("query", "page"),
    [
        ("", (0, 1000)),
        ("limit=100", (0, 100)),
        ("cursor=7&limit=2", (7, 2)),
        ("cursor=", (0, 1000)),
        ("limit=1000", (0, 1000)),
        ("limit=1001", None),  # the route's 422
        ("limit=0", None),
        ("limit=010", None),  # not plainly decimal: the route reads it
        ("limit=1&limit=2", None),  # twice
        ("limit", None),
        ("cursor=x", None),  # the route's 400
        ("cursor=1234567890", None),
        ("limit=%31", None),
        ("other=1", None),
    ],
)
def test_the_fast_path_reads_only_plain_epoch_page_queries(query: str, page: tuple[int, int] | None) -> None:
    from app.routes.polled import epochs_page_of

    assert epochs_page_of(query) == page


def test_not_modified_compares_entity_tags_weakly_in_lists_and_repeated_headers() -> None:
    from starlette.datastructures import Headers

    from app.routes.polled import not_modified

    def headers(*values: str) -> Headers:
        return Headers(raw=[(b"if-none-match", value.encode()) for value in values])

    assert not_modified(headers('"abc"'), '"abc"')
    assert not_modified(headers('W/"abc"'), '"abc"')
    assert not_modified(headers('"x", "abc"'), '"abc"')
    assert not_modified(headers('"x"', '"abc"'), '"abc"')
    assert not_modified(headers("*"), '"abc"')
    assert not not_modified(headers('"abd"'), '"abc"')
    assert not not_modified(headers(), '"abc"')
    assert not not_modified(headers("abc"), '"abc"')  # unquoted: not an entity tag


def test_every_epochs_page_is_kept_with_the_same_body_and_an_etag(
    app_client, make_key, record_epochs
) -> None:
    """`/epochs?limit=2` (and with a cursor) kept like the first page: served from memory with the very
    bytes the route builds when nothing is kept, an ETag on each answer, and 304 without a body for an
    If-None-Match naming it, from memory and from the route alike; a changed page gets a new tag."""
    headers = {"Authorization": f"Bearer {make_key()[1]}"}
    uncached = app_client(read_cache_seconds=0.0)
    search_id = uncached.post("/searches", json=DIGITS, headers=headers).json()["id"]
    record_epochs(search_id, 3)
    kept_api = app_client(read_cache_seconds=60.0, key_cache_seconds=60.0)
    cache = kept_api.app.state.read_cache
    for query in ("?limit=2", "?cursor=2&limit=2", "?cursor=1", ""):
        path = f"/searches/{search_id}/epochs{query}"
        built = uncached.get(path, headers=headers)
        assert built.status_code == 200 and built.headers["etag"].startswith('"')
        first = kept_api.get(path, headers=headers)  # built by the route and kept
        builds = cache.builds
        again = kept_api.get(path, headers=headers)  # from memory (the middleware)
        assert cache.builds == builds
        assert first.content == again.content == built.content
        assert first.headers["etag"] == again.headers["etag"] == built.headers["etag"]
        assert again.headers["content-type"] == "application/json"
        for api in (kept_api, uncached):  # from memory, then from the route
            same = api.get(path, headers={**headers, "If-None-Match": built.headers["etag"]})
            assert same.status_code == 304 and same.content == b""
            assert same.headers["etag"] == built.headers["etag"]
            stale = api.get(path, headers={**headers, "If-None-Match": '"not-this-one"'})
            assert stale.status_code == 200 and stale.content == built.content
    page = uncached.get(f"/searches/{search_id}/epochs?limit=2", headers=headers).json()
    assert [item["epoch"] for item in page["items"]] == [1, 2] and page["next_cursor"] == "2"
    whole = uncached.get(f"/searches/{search_id}/epochs?cursor=1", headers=headers)
    record_epochs(search_id, [4])
    grown = uncached.get(f"/searches/{search_id}/epochs?cursor=1", headers=headers)
    assert [item["epoch"] for item in grown.json()["items"]] == [2, 3, 4]
    assert grown.headers["etag"] != whole.headers["etag"]
    refreshed = uncached.get(
        f"/searches/{search_id}/epochs?cursor=1", headers={**headers, "If-None-Match": whole.headers["etag"]}
    )
    assert refreshed.status_code == 200 and refreshed.content == grown.content
    other = {"Authorization": f"Bearer {make_key()[1]}"}
    hidden = kept_api.get(
        f"/searches/{search_id}/epochs?limit=2", headers={**other, "If-None-Match": "*"}
    )
    assert hidden.status_code == 404  # another owner learns nothing, not even a 304


def test_a_training_and_its_epochs_pages_have_etags_too(app_client, make_key) -> None:
    headers = {"Authorization": f"Bearer {make_key()[1]}"}
    api = app_client(read_cache_seconds=60.0, key_cache_seconds=60.0)
    body = {"genotype": GENOTYPE_TEMPLATE, **DIGITS, "training": {"epochs": 2}}
    training_id = api.post("/trainings", json=body, headers=headers).json()["id"]
    for path in (f"/trainings/{training_id}", f"/trainings/{training_id}/epochs?limit=5"):
        answers = [api.get(path, headers=headers) for _ in range(2)]  # route, then memory
        assert answers[0].content == answers[1].content
        assert answers[0].headers["etag"] == answers[1].headers["etag"]
        same = api.get(path, headers={**headers, "If-None-Match": answers[0].headers["etag"]})
        assert same.status_code == 304 and same.content == b""
