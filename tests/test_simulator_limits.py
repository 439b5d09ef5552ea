"""The simulator's rate-limit shapes, on a hand-moved clock: token buckets with their own burst,
schedules, polls on the create limit, the running cap, Retry-After modes, and what stats record."""

from __future__ import annotations

import math
from email.utils import formatdate, parsedate_to_datetime

import anyio
import httpx
import pytest

from batchgen.simulator import RateSchedule, default_burst, key_label

from .simkit import API_KEY, FakeClock, api_client, create, make


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def accepted(client: httpx.AsyncClient, tries: int, prompt: str = "p") -> int:
    """How many of ``tries`` creates sent at this instant get 201."""
    codes = [(await create(client, f"{prompt} {i}")).status_code for i in range(tries)]
    assert set(codes) <= {201, 429}
    return codes.count(201)


# --- token bucket ---


@pytest.mark.anyio
async def test_bucket_starts_with_its_burst_then_refills_at_the_rate():
    """A bucket of 3 at 10/s: 3 creates at once, then one per 0.1 s, never more than 3 saved up."""
    sim, clock = make(create_rate=10, create_burst=3)
    async with api_client(sim) as client:
        assert await accepted(client, 5, "a") == 3
        clock.advance(0.1)
        assert await accepted(client, 5, "b") == 1
        clock.advance(0.25)
        assert await accepted(client, 5, "c") == 2  # 2.5 tokens earned: two whole ones
        clock.advance(60)
        assert await accepted(client, 10, "d") == 3  # a minute of quiet still saves only the burst
    assert sim.stats()["rate_limited_by"] == {"create_rate": (5 - 3) + (5 - 1) + (5 - 2) + (10 - 3)}


@pytest.mark.anyio
@pytest.mark.parametrize("rate", [2, 30, 150])
async def test_default_burst_is_small_not_the_rate(rate):
    """Without create_burst a fresh bucket lets through default_burst(rate) creates: a tenth of the rate, at least 1."""
    sim, _ = make(create_rate=rate)
    async with api_client(sim) as client:
        assert await accepted(client, rate + 5) == default_burst(rate)
    assert default_burst(rate) == max(1, round(rate / 10)) and default_burst(rate) < rate


@pytest.mark.anyio
async def test_sustained_rate_matches_the_limit():
    """Hammering for 10 s at a 20/s limit gets burst + 20 * 10 creates through, and not one more."""
    sim, clock = make(create_rate=20, create_burst=4)
    async with api_client(sim) as client:
        total = 0
        for _ in range(1000):  # a create attempt every 10 ms
            total += await accepted(client, 1)
            clock.advance(0.01)
    assert total == 4 + math.floor(20 * 9.99)  # the burst, then what 20/s earns up to the last attempt


# --- schedules ---


@pytest.mark.anyio
async def test_schedule_changes_the_rate_at_its_times():
    """'30,15@6,30@12': 30/s for 6 s, 15/s for 6 s, then 30/s; stats show each limit from its second."""
    sim, clock = make(create_rate="30,15@6,30@12", create_burst=2)  # 2: no token lost between 20 ms probes
    per_phase = [0, 0, 0]
    async with api_client(sim) as client:
        for step in range(18 * 50):  # an attempt every 20 ms for 18 s
            per_phase[step // 300] += await accepted(client, 1)
            clock.advance(0.02)
    expected = [2 + 30 * 6, 15 * 6, 30 * 6]  # the burst, then each phase's rate times its length
    assert per_phase == [pytest.approx(n, abs=1) for n in expected]
    timeline = sim.stats()["limit_timeline"]
    assert timeline["create_rate"] == [[0.0, 30.0, 2], [6.0, 15.0, 2], [12.0, 30.0, 2]]
    assert timeline["request_rate"] == [[0.0, None, None]] and timeline["max_running"] == [[0.0, None]]


@pytest.mark.anyio
async def test_precise_retry_after_looks_ahead_across_a_schedule_step():
    """An empty bucket at 0.5/s just before the rate rises to 10/s says 1 s, not the 2 s the old rate needs."""
    sim, clock = make(create_rate="0.5,10@5.5", create_burst=1)
    async with api_client(sim) as client:
        assert await accepted(client, 1) == 1
        clock.advance(5.0)  # 2.5 tokens earned, capped at 1
        assert await accepted(client, 1, "q") == 1
        refused = await create(client, "r")
    assert refused.status_code == 429
    # 0.5 s at 0.5/s earns 0.25; the remaining 0.75 takes 0.075 s at 10/s: 0.575 s, rounded up.
    assert refused.headers["retry-after"] == "1"


@pytest.mark.anyio
async def test_default_burst_follows_the_rate_in_force():
    """With no burst given, each schedule step's bucket holds default_burst of that step's rate."""
    sim, clock = make(create_rate="40,150@10")
    async with api_client(sim) as client:
        assert await accepted(client, 50, "a") == default_burst(40)
        clock.advance(20)
        assert await accepted(client, 50, "b") == default_burst(150)
    rows = sim.stats()["limit_timeline"]["create_rate"]
    assert rows == [[0.0, 40.0, default_burst(40)], [10.0, 150.0, default_burst(150)]]


@pytest.mark.anyio
async def test_request_rate_takes_the_same_schedule_syntax():
    """request_rate is a schedule too, and limits polls as well as creates."""
    sim, clock = make(request_rate="2,100@3", request_burst=2)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        codes = [(await client.get(f"/runs/{run_id}")).status_code for _ in range(3)]
        clock.advance(3)
        later = [(await client.get(f"/runs/{run_id}")).status_code for _ in range(2)]
    assert codes == [200, 429, 429] and later == [200, 200]
    assert sim.stats()["limit_timeline"]["request_rate"] == [[0.0, 2.0, 2], [3.0, 100.0, 2]]


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("", "is not RATE"),
        ("fast", "is not RATE"),
        ("0", "positive"),
        ("-3", "positive"),
        ("30,15", "needs @SECONDS"),
        ("30,15@6,20@6", "later than the step before"),
        ("30,15@x", "is not RATE"),
        ("30@4", "applies from the start"),
        ("30,15@-1", "seconds >= 0"),
        ("inf", "positive"),
    ],
)
def test_bad_schedules_are_refused_naming_the_piece(spec, complaint):
    """A schedule that does not parse is a ValueError saying which piece is wrong and how to write one."""
    with pytest.raises(ValueError, match=complaint):
        RateSchedule.parse(spec, "create_rate")


def test_schedule_rate_at_and_segments():
    """A schedule gives the rate in force at a moment and the pieces of an interval."""
    schedule = RateSchedule.parse("30,15@6,30@12")
    assert [schedule.rate_at(t) for t in (0, 5.99, 6, 11.5, 12, 1e6)] == [30, 30, 15, 15, 30, 30]
    assert list(schedule.segments(5, 13)) == [(5, 6, 30), (6, 12, 15), (12, 13, 30)]
    assert schedule.seconds_to_earn(5.5, 30) == pytest.approx(0.5 + (30 - 15) / 15)


# --- polls, running cap ---


@pytest.mark.anyio
async def test_polls_count_against_the_create_limit_when_asked():
    """polls_count: a poll takes a create token, so polls and creates share one limit; without it polls are free."""
    sim, _ = make(create_rate=1, create_burst=3, polls_count=True)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        polls = [(await client.get(f"/runs/{run_id}")).status_code for _ in range(3)]
        assert (await create(client, "another")).status_code == 429
    assert polls == [200, 200, 429]
    assert sim.stats()["rate_limited_by"] == {"create_rate": 2}
    sim, _ = make(create_rate=1, create_burst=1)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        assert {(await client.get(f"/runs/{run_id}")).status_code for _ in range(5)} == {200}


@pytest.mark.anyio
async def test_running_cap_refuses_creates_until_a_run_finishes():
    """max_running=2: a third create gets 429 saying when the first run ends; once runs end (no poll needed) more go."""
    sim, clock = make(max_running=2, latency=1.0)
    async with api_client(sim) as client:
        assert [(await create(client, p)).status_code for p in "ab"] == [201, 201]
        clock.advance(0.25)
        refused = await create(client, "c")
        other_key = await create(client, "c", headers={"Authorization": "Bearer someone-else"})
        clock.advance(0.75)
        assert [(await create(client, p)).status_code for p in "cde"] == [201, 201, 429]
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert set(refused.headers) == {"retry-after", "content-length", "content-type"}  # nothing a real one lacks
    assert "at most 2 unfinished runs" in refused.json()["error"]["message"]
    assert other_key.status_code == 201  # the cap is per key
    stats = sim.stats()
    assert stats["rate_limited_by"] == {"max_running": 2} and stats["max_unfinished_runs"] == 2
    assert stats["limit_timeline"]["max_running"] == [[0.0, 2]]


@pytest.mark.anyio
async def test_stuck_runs_hold_the_running_cap_and_advertise_no_time():
    """Runs that never finish keep their slots; precise Retry-After has nothing to say, fixed:N still says N."""
    sim, clock = make(max_running=1, stuck_rate=1.0)
    async with api_client(sim) as client:
        assert (await create(client)).status_code == 201
        clock.advance(3600)
        refused = await create(client, "b")
        sim.config.retry_after = "fixed:5"
        fixed = await create(client, "b")
    assert refused.status_code == 429 and "retry-after" not in refused.headers
    assert fixed.status_code == 429 and fixed.headers["retry-after"] == "5"


# --- Retry-After modes ---


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("precise", {"retry-after": "3"}),
        ("precise-ms", {"retry-after": "3", "retry-after-ms": "2500"}),
        ("fixed:7", {"retry-after": "7"}),
        ("fixed:0", {"retry-after": "0"}),
        ("none", {}),
    ],
)
async def test_retry_after_modes(mode, expected):
    """A token 2.5 s away: precise says 3 (whole seconds, up), precise-ms adds 2500, fixed:N says N, none nothing."""
    sim, _ = make(create_rate=0.4, create_burst=1, retry_after=mode)
    async with api_client(sim) as client:
        await create(client)
        refused = await create(client, "b")
    assert refused.status_code == 429
    assert {k: v for k, v in refused.headers.items() if k.startswith("retry-after")} == expected


@pytest.mark.anyio
async def test_retry_after_date_names_the_second_a_token_is_back():
    """date: an HTTP-date on the wall clock, the exact time rounded up to the next whole second."""
    sim, clock = make(create_rate=0.4, create_burst=1, retry_after="date")
    clock.advance(0.3)  # the wall clock is 1000.3: a token is back at 1002.8, the header says 1003
    async with api_client(sim) as client:
        await create(client)
        refused = await create(client, "b")
    header = refused.headers["retry-after"]
    assert header == formatdate(1003, usegmt=True)
    assert parsedate_to_datetime(header).timestamp() == math.ceil(clock.now + 2.5)


def test_retry_after_true_and_false_mean_precise_and_none():
    """The earlier boolean form still works: True is precise, False is none."""
    assert make(retry_after=True)[0].config.retry_after == "precise"
    assert make(retry_after=False)[0].config.retry_after == "none"
    with pytest.raises(ValueError, match="retry_after must be one of"):
        make(retry_after="fixed:soon")


# --- what stats record ---


@pytest.mark.anyio
async def test_create_log_records_every_create_with_its_answer():
    """Every create request is logged with its time, status and, for a 429, which limit refused it."""
    sim, clock = make(create_rate=1, create_burst=2, max_running=2, latency=100)
    async with api_client(sim) as client:
        await create(client, "a")
        await client.post("/runs", json={"model": "nope"})  # a 400 takes its token like any request
        await create(client, "b")
        clock.advance(1)
        await create(client, "b")
        clock.advance(1)
        await create(client, "c")
    assert sim.stats()["create_log"] == [
        [0.0, 201, ""],
        [0.0, 400, ""],
        [0.0, 429, "create_rate"],
        [1.0, 201, ""],
        [2.0, 429, "max_running"],
    ]


@pytest.mark.anyio
async def test_runtime_config_changes_are_in_the_limit_timeline():
    """A limit changed through POST /_sim/config shows in limit_timeline from the moment it changed."""
    sim, clock = make(create_rate=10)
    async with api_client(sim) as client:
        clock.advance(4)
        changed = await client.post("http://api.runbase.test/_sim/config", json={"create_rate": "5,20@8"})
        assert changed.status_code == 200
        clock.advance(6)
        bad = await client.post("http://api.runbase.test/_sim/config", json={"create_rate": "5,20"})
    assert bad.status_code == 400 and "needs @SECONDS" in bad.json()["error"]["message"]
    assert sim.stats()["limit_timeline"]["create_rate"] == [
        [0.0, 10.0, default_burst(10)],
        [4.0, 5.0, default_burst(5)],
        [8.0, 20.0, default_burst(20)],
    ]


# --- Retry-After violations ---


async def refused_then_wait(client: httpx.AsyncClient, clock: FakeClock, seconds: float) -> None:
    """Spend the one token, have a second create refused (429), then let ``seconds`` pass."""
    await create(client)
    await create(client, "b")
    clock.advance(seconds)


@pytest.mark.anyio
async def test_a_request_before_the_advertised_time_is_a_violation():
    """After a 429 saying 'Retry-After: 2', a poll at +0.5 s and a create at +1.9 s are violations; later ones not."""
    sim, clock = make(create_rate=0.5, create_burst=1)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        assert (await create(client, "b")).headers["retry-after"] == "2"
        clock.advance(0.5)
        await client.get(f"/runs/{run_id}")
        clock.advance(1.4)
        await create(client, "b")  # 429 again, and a violation
        clock.advance(2.0)
        await create(client, "c")  # after every advertised time: fine
    stats = sim.stats()
    label = key_label(API_KEY)
    assert stats["retry_after_violations"] == 2
    assert stats["retry_after_violations_by_key"] == {label: 2}
    assert stats["retry_after_violations_by_kind"] == {"get": 1, "create": 1}
    assert stats["retry_after_violation_log"] == [
        {"t": 0.5, "key": label, "kind": "get", "early_by": 1.5, "after_429": 0.5},
        {"t": 1.9, "key": label, "kind": "create", "early_by": 0.1, "after_429": 1.9},
    ]
    assert API_KEY not in str(stats)


@pytest.mark.anyio
async def test_violations_are_per_key_and_need_an_advertised_time():
    """Another key's requests are not violations; a 429 without Retry-After advertises nothing to violate."""
    sim, clock = make(create_rate=0.5, create_burst=1)
    async with api_client(sim) as client:
        await refused_then_wait(client, clock, 0.5)
        await create(client, "c", headers={"Authorization": "Bearer other-key"})
    assert sim.stats()["retry_after_violations"] == 0
    sim, clock = make(create_rate=0.5, create_burst=1, retry_after="none")
    async with api_client(sim) as client:
        await refused_then_wait(client, clock, 0.5)
        await create(client, "c")
    assert sim.stats()["retry_after_violations"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "ok_after"), [("fixed:3", 3.0), ("precise-ms", 0.25), ("date", 1.0)])
async def test_the_advertised_time_is_what_the_header_says(mode, ok_after):
    """fixed:3 forbids 3 s whatever the real wait; precise-ms forbids exactly the ms; date up to the named second."""
    sim, clock = make(create_rate=4, create_burst=1, retry_after=mode)  # a token is 0.25 s away
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        await create(client, "b")
        clock.advance(ok_after - 1 / 64)
        await client.get(f"/runs/{run_id}")  # a poll is not limited here, so it opens no window of its own
        clock.advance(1 / 64)
        await client.get(f"/runs/{run_id}")
    stats = sim.stats()
    assert stats["retry_after_violations"] == 1
    assert stats["retry_after_violation_log"][0]["early_by"] == pytest.approx(1 / 64)


async def send_raw(sim, path: str, body: bytes, release: anyio.Event | None = None) -> int:
    """Call the app directly; its body arrives only once ``release`` is set (the request is on the wire)."""
    status = 0

    async def receive():
        if release is not None:
            await release.wait()
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    headers = [(b"host", b"api.runbase.test"), (b"authorization", f"Bearer {API_KEY}".encode())]
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "headers": headers}
    await sim(scope, receive, send)
    return status


@pytest.mark.anyio
async def test_requests_already_on_the_wire_are_not_violations():
    """A request whose headers arrived before the 429 was sent is not a violation, even if it is handled after."""
    sim, clock = make(create_rate=0.5, create_burst=1)
    body = b'{"model": "openai/gpt-image-1.5", "input": {"prompt": "p"}}'
    statuses: list[int] = []
    release = anyio.Event()

    async def late() -> None:
        statuses.append(await send_raw(sim, "/api/v1/runs", body.replace(b'"p"', b'"late"'), release))

    async with anyio.create_task_group() as tg:
        assert await send_raw(sim, "/api/v1/runs", body) == 201
        clock.advance(0.2)
        tg.start_soon(late)  # arrives now, its body still coming
        await anyio.wait_all_tasks_blocked()
        clock.advance(0.1)
        assert await send_raw(sim, "/api/v1/runs", body.replace(b'"p"', b'"b"')) == 429  # sent at 0.3
        clock.advance(0.1)
        release.set()
    assert statuses == [429]
    assert sim.stats()["retry_after_violations"] == 0
    clock.advance(0.1)
    await send_raw(sim, "/api/v1/runs", body)  # 0.5 s: after the 429 was sent, before its time
    assert sim.stats()["retry_after_violations"] == 1


@pytest.mark.anyio
async def test_violation_grace_takes_late_arrivals_as_in_flight():
    """With violation_grace=0.2, a request 0.1 s after a 429 was sent counts as in flight; one at 0.3 s counts."""
    sim, clock = make(create_rate=0.2, create_burst=1, violation_grace=0.2)
    async with api_client(sim) as client:
        await refused_then_wait(client, clock, 0.1)
        await create(client, "c")
        assert sim.stats()["retry_after_violations"] == 0
        clock.advance(0.2)
        await create(client, "d")
    assert sim.stats()["retry_after_violations"] == 1
