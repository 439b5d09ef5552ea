"""The Runbase simulator: routes, accounting, rate limits, faults and determinism."""

from __future__ import annotations

import hashlib
import time

import anyio
import httpx
import pytest

from batchgen.models import DEFAULT_MODEL
from batchgen.simulator import ServerError, SimConfig, Simulator, SimulatorServer

from .conftest import outputs_of_one_run
from .simkit import AUTH, api_client, create, files_client, finished, make, png_size


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("aspect", "size"), [(None, (64, 64)), ("1:1", (64, 64)), ("3:2", (96, 64)), ("2:3", (64, 96))]
)
async def test_create_poll_download_png(aspect, size):
    """A run goes create -> succeeded and its output URL serves a valid PNG sized by aspect ratio."""
    sim, clock = make(latency=1.0)
    extra = {"aspect_ratio": aspect} if aspect else {}
    async with api_client(sim) as client, files_client(sim) as files:
        created = await create(client, **extra)
        assert created.status_code == 201
        body = created.json()
        assert body["status"] == "queued" and body["id"].startswith("run_") and body["model"] == DEFAULT_MODEL
        run = await finished(client, clock, body["id"])
        assert run["status"] == "succeeded" and len(run["output"]["urls"]) == 1
        download = await files.get(run["output"]["urls"][0])
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert int(download.headers["content-length"]) == len(download.content)
    assert png_size(download.content) == size
    record = sim.stats()["runs"][0]
    assert record["files"] == [
        {"n": 0, "sha256": hashlib.sha256(download.content).hexdigest(), "bytes": len(download.content)}
    ]


@pytest.mark.anyio
async def test_status_follows_the_clock():
    """A run is queued for the first 10% of its generation time, then running, then succeeded."""
    sim, clock = make(latency=1.0)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        statuses = []
        for step in (0.05, 0.5, 0.5):
            clock.advance(step)
            statuses.append((await client.get(f"/runs/{run_id}")).json()["status"])
    assert statuses == ["queued", "running", "succeeded"]
    assert sim.stats()["runs"][0]["ready_at"] == pytest.approx(1.0)


@pytest.mark.anyio
async def test_get_has_input_and_unknown_fields():
    """A GET echoes the input and carries fields a client must ignore (metrics, logs)."""
    sim, clock = make()
    async with api_client(sim) as client:
        run_id = (await create(client, quality="high")).json()["id"]
        run = await finished(client, clock, run_id)
    assert run["input"] == {"prompt": "a ceramic lamp", "quality": "high"}
    assert "metrics" in run and "logs" in run and run["created_at"].endswith("Z")


@pytest.mark.anyio
async def test_failed_and_stuck_runs():
    """failure_rate=1 gives failed runs with an error message; stuck_rate=1 keeps runs running forever."""
    sim, clock = make(failure_rate=1.0)
    async with api_client(sim) as client:
        run = await finished(client, clock, (await create(client)).json()["id"])
    assert run["status"] == "failed" and run["error"]["message"].startswith("generation failed: ")
    assert "output" not in run
    sim, clock = make(stuck_rate=1.0)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        clock.advance(1e6)
        assert (await client.get(f"/runs/{run_id}")).json()["status"] == "running"
    assert sim.stats()["runs"][0]["ready_at"] is None


@pytest.mark.anyio
async def test_outputs_per_run():
    """outputs_per_run controls how many output URLs a run has, each serving a different image."""
    images = await outputs_of_one_run(*make(outputs_per_run=3))
    assert len(images) == 3 and len(set(images)) == 3


@pytest.mark.anyio
async def test_auth():
    """A missing, empty or wrong key gets 401 on create and get; without api_key any token passes."""
    sim, _ = make(api_key="secret")
    async with api_client(sim, headers={}) as client:
        assert (await create(client)).status_code == 401
        wrong = await client.post("/runs", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
        assert (await client.get("/runs/run_x", headers={"Authorization": "Bearer "})).status_code == 401
        right = await client.post(
            "/runs",
            json={"model": DEFAULT_MODEL, "input": {"prompt": "p"}},
            headers={"Authorization": "Bearer secret"},
        )
        assert right.status_code == 201
    assert sim.stats()["unauthorized"] == 3 and sim.stats()["creates"] == 1
    sim, _ = make()
    async with api_client(sim, headers={"Authorization": "Bearer anything"}) as client:
        assert (await create(client)).status_code == 201


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"input": {"prompt": "p"}}', "model"),
        (b'{"model": "other/model", "input": {"prompt": "p"}}', "model"),
        (b'{"model": "openai/gpt-image-1.5"}', "input"),
        (b'{"model": "openai/gpt-image-1.5", "input": {}}', "input.prompt"),
        (b'{"model": "openai/gpt-image-1.5", "input": {"prompt": "  "}}', "input.prompt"),
        (
            b'{"model": "openai/gpt-image-1.5", "input": {"prompt": "p", "aspect_ratio": "4:3"}}',
            "aspect_ratio",
        ),
        (b'{"model": "openai/gpt-image-1.5", "input": {"prompt": "p", "quality": "low"}}', "input.quality"),
        (b'{"model": "openai/gpt-image-1.5", "input": {"prompt": "p", "image_urls": "x"}}', "image_urls"),
        (b'{"model": "openai/gpt-image-1.5", "input": {"prompt": "p", "seed": 3}}', "input.seed"),
    ],
)
async def test_bad_requests(body, field):
    """An invalid create gets 400 with a message naming the field, and creates nothing."""
    sim, _ = make()
    async with api_client(sim) as client:
        response = await client.post("/runs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]
    assert sim.stats()["bad_requests"] == 1 and sim.stats()["creates"] == 0


@pytest.mark.anyio
async def test_credits_402_then_more_credits():
    """Creates answer 402 once credits are used up, and succeed again after credits are added."""
    sim, _ = make(credits=2)
    async with api_client(sim) as client:
        assert [(await create(client, f"p{i}")).status_code for i in range(3)] == [201, 201, 402]
        sim.add_credits(1)
        assert (await create(client, "p3")).status_code == 201
        assert (await create(client, "p4")).status_code == 402
        added = await client.post("http://api.runbase.test/_sim/credits", json={"add": 1})
        assert added.json() == {"credits": 1}
        assert (await create(client, "p5")).status_code == 201
    stats = sim.stats()
    assert stats["creates"] == 4 and stats["payment_required"] == 2 and stats["credits"] == 0


@pytest.mark.anyio
async def test_forbidden_and_runtime_config():
    """forbidden=True answers 403 to creates; POST /_sim/config changes the config at runtime."""
    sim, _ = make(forbidden=True)
    async with api_client(sim) as client:
        response = await create(client)
        assert response.status_code == 403 and "spending cap" in response.json()["error"]["message"]
        changed = await client.post("http://api.runbase.test/_sim/config", json={"forbidden": False})
        assert changed.status_code == 200 and sim.config.forbidden is False
        assert (await create(client)).status_code == 201
        bad = await client.post("http://api.runbase.test/_sim/config", json={"nope": 1})
        assert bad.status_code == 400
        bad = await client.post("http://api.runbase.test/_sim/config", json={"faults": {"typo": 1}})
        assert bad.status_code == 400
    assert sim.stats()["forbidden"] == 1


@pytest.mark.anyio
async def test_create_rate_limit_with_retry_after():
    """Creates beyond create_rate get 429 with Retry-After (ceil of the wait) until a token refills."""
    sim, clock = make(create_rate=0.5)
    async with api_client(sim) as client:
        assert (await create(client, "a")).status_code == 201
        limited = await create(client, "b")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
        assert limited.json() == {"error": {"message": "rate limit exceeded"}}
        clock.advance(1.5)
        assert (await create(client, "b")).headers["retry-after"] == "1"
        clock.advance(0.5)
        assert (await create(client, "b")).status_code == 201
        # Polls are not creates: create_rate leaves them alone.
        assert (await client.get(f"/runs/{sim.stats()['runs'][0]['id']}")).status_code == 200
    assert sim.stats()["rate_limited_creates"] == 2 and sim.stats()["rate_limited_gets"] == 0


@pytest.mark.anyio
async def test_request_rate_limit_counts_gets_and_can_omit_retry_after():
    """request_rate limits gets too; retry_after=False leaves out the header; buckets are per key."""
    sim, _ = make(request_rate=2, request_burst=2, retry_after=False)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        assert (await client.get(f"/runs/{run_id}")).status_code == 200
        limited = await client.get(f"/runs/{run_id}")
        assert limited.status_code == 429 and "retry-after" not in limited.headers
        other_key = await client.get(f"/runs/{run_id}", headers={"Authorization": "Bearer other"})
        assert other_key.status_code == 200
        assert (await create(client)).status_code == 429
    stats = sim.stats()
    assert stats["rate_limited_gets"] == 1 and stats["rate_limited_creates"] == 1
    assert stats["runs"][0]["polls"] == 2


@pytest.mark.anyio
async def test_unknown_run_and_routes_404():
    """An unknown run gets 404 {"error": "run not found"}; unknown routes get a 404 JSON body."""
    sim, _ = make()
    async with api_client(sim) as client:
        missing = await client.get("/runs/run_nope")
        assert missing.status_code == 404 and missing.json() == {"error": "run not found"}
        assert (await client.get("/models")).status_code == 404
        assert (await client.delete("/runs/run_nope")).json() == {"error": "not found"}


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1:8123", "http://localhost:8123"),
        ("localhost:8123", "http://127.0.0.1:8123"),
        ("api.runbase.test", "http://files.api.runbase.test"),
    ],
)
@pytest.mark.anyio
async def test_files_origin_differs_from_api(host, origin):
    """Output URLs name another origin than the API's, derived from the Host the request was sent to."""
    sim, clock = make()
    client = httpx.AsyncClient(transport=sim.transport(), base_url=f"http://{host}/api/v1", headers=AUTH)
    async with client:
        run = await finished(client, clock, (await create(client)).json()["id"])
    assert run["output"]["urls"][0].startswith(origin + "/files/run_")


@pytest.mark.anyio
async def test_output_urls_on_other_origin_and_key_leak_counted():
    """Output URLs point at the files origin (or files_origin); sending the API key there is counted."""
    sim, clock = make()
    async with api_client(sim) as client:
        run = await finished(client, clock, (await create(client)).json()["id"])
        url = run["output"]["urls"][0]
        assert url.startswith("http://files.api.runbase.test/files/run_")
        assert (await client.get(url)).status_code == 200  # this client sends its key: a leak
    assert sim.stats()["auth_on_files"] == 1 and sim.stats()["downloads"] == 1
    sim, clock = make(files_origin="https://cdn.example")
    async with api_client(sim) as client:
        run = await finished(client, clock, (await create(client)).json()["id"])
    assert run["output"]["urls"][0].startswith("https://cdn.example/files/")


@pytest.mark.anyio
async def test_expired_bad_and_unknown_links():
    """Links expire output_ttl after they are handed out (403); a new GET mints fresh ones;
    a bad signature gets 403 and an unknown run 404."""
    sim, clock = make(output_ttl=5.0)
    async with api_client(sim) as client, files_client(sim) as files:
        run_id = (await create(client)).json()["id"]
        url = (await finished(client, clock, run_id))["output"]["urls"][0]
        clock.advance(6)
        expired = await files.get(url)
        assert expired.status_code == 403 and expired.headers["content-type"].startswith("text/plain")
        fresh = (await client.get(f"/runs/{run_id}")).json()["output"]["urls"][0]
        assert fresh != url and (await files.get(fresh)).status_code == 200
        assert (await files.get(fresh.replace("sig=", "sig=0"))).status_code == 403
        assert (await files.get(fresh.replace(run_id, "run_unknown"))).status_code == 404


@pytest.mark.anyio
async def test_stats_track_concurrency_and_duplicates():
    """Stats count in-flight runs (until a client sees them terminal), polls and duplicate creates."""
    sim, clock = make(latency=1.0)
    async with api_client(sim) as client:
        ids = [(await create(client, prompt)).json()["id"] for prompt in ("a", "b", "a")]
        assert sim.stats()["in_flight_now"] == 3
        clock.advance(2)
        await client.get(f"/runs/{ids[0]}")
        await client.get(f"/runs/{ids[0]}")
        after = sim.stats()
        assert (await client.get("http://api.runbase.test/_sim/stats")).json()["creates"] == 3
    assert after["max_in_flight"] == 3 and after["in_flight_now"] == 2
    assert after["creates_per_prompt_max"] == 2 and after["create_requests"] == 3 and after["gets"] == 2
    first = after["runs"][0]
    assert first["polls"] == 2 and first["first_terminal_get_at"] == pytest.approx(2.0)
    assert first["created_at"] == 0.0 and first["prompt"] == "a" and first["status"] == "succeeded"


def test_unknown_fault_name_is_rejected():
    """A misspelt fault name fails fast instead of silently injecting nothing."""
    with pytest.raises(ValueError, match="unknown fault"):
        SimConfig(faults={"http_501": 1.0})


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["http_500", "http_502_html", "http_503"])
async def test_error_faults(fault):
    """5xx faults answer creates (without creating a run) and gets with the configured error body."""
    sim, _ = make(faults={fault: 1.0})
    async with api_client(sim) as client:
        answers = [await create(client), await client.get("/runs/run_x")]
    for answer in answers:
        if fault == "http_500":
            assert answer.status_code == 500 and answer.json()["error"]["message"]
        elif fault == "http_502_html":
            assert answer.status_code == 502 and answer.headers["content-type"].startswith("text/html")
            assert b"<h1>502 Bad Gateway</h1>" in answer.content
        else:
            assert answer.status_code == 503 and answer.content == b""
    assert sim.stats()["creates"] == 0 and sim.stats()["faults"] == {fault: 2}


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["reset_after_create", "malformed_json"])
async def test_lost_create_answers(fault):
    """reset_after_create and malformed_json on create make (and bill) the run but lose its answer."""
    sim, _ = make(faults={fault: 1.0}, credits=5)
    async with api_client(sim) as client:
        if fault == "reset_after_create":
            with pytest.raises(httpx.TransportError):
                await create(client)
        else:
            response = await create(client)
            with pytest.raises(ValueError):
                response.json()
    stats = sim.stats()
    assert stats["creates"] == 1 and stats["lost_create_answers"] == 1 and stats["credits"] == 4
    assert stats["runs"][0]["answer_lost"] is True and stats["faults"] == {fault: 1}


@pytest.mark.anyio
async def test_get_faults_reset_truncated_malformed():
    """reset, truncated and malformed_json spoil a GET's answer, and such answers do not count as seen."""
    sim, clock = make()
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        clock.advance(1)
        sim.config.faults = {"reset": 1.0}
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"/runs/{run_id}")
        sim.config.faults = {"truncated": 1.0}
        truncated = await client.get(f"/runs/{run_id}")
        assert int(truncated.headers["content-length"]) > len(truncated.content)
        sim.config.faults = {"malformed_json": 1.0}
        malformed = await client.get(f"/runs/{run_id}")
        assert malformed.status_code == 200
        with pytest.raises(ValueError):
            malformed.json()
        assert sim.stats()["runs"][0]["first_terminal_get_at"] is None
        sim.config.faults = {}
        assert (await client.get(f"/runs/{run_id}")).json()["status"] == "succeeded"
    stats = sim.stats()
    assert stats["faults"] == {"reset": 1, "truncated": 1, "malformed_json": 1}
    assert stats["runs"][0]["first_terminal_get_at"] is not None and stats["in_flight_now"] == 0


@pytest.mark.anyio
async def test_slow_fault_outlasts_a_client_timeout():
    """slow delays the answer by slow_seconds after the run is made: a client timeout leaves a lost answer."""
    sim, _ = make(faults={"slow": 1.0}, slow_seconds=5.0)
    async with api_client(sim) as client:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await create(client)
        sim.config.slow_seconds = 0.01
        assert (await create(client, "quick")).status_code == 201
    stats = sim.stats()
    assert stats["creates"] == 2 and stats["faults"] == {"slow": 2} and stats["lost_create_answers"] == 1
    assert [run["answer_lost"] for run in stats["runs"]] == [True, False]


@pytest.mark.anyio
async def test_download_faults():
    """expire_first_fetch refuses a link's first fetch, redirect hops to a valid URL,
    redirect_bad_scheme points at ftp:// or file://, truncated cuts the PNG short."""
    sim, clock = make()
    async with api_client(sim) as client, files_client(sim) as files:
        run_id = (await create(client)).json()["id"]
        url = (await finished(client, clock, run_id))["output"]["urls"][0]
        sim.config.faults = {"expire_first_fetch": 1.0}
        assert (await files.get(url)).status_code == 403
        assert (await files.get(url)).status_code == 200
        sim.config.faults = {"redirect": 1.0}
        hop = await files.get(url)
        assert hop.status_code == 302
        assert hop.headers["location"].startswith("http://files.api.runbase.test/files/")
        followed = await files.get(url, follow_redirects=True)
        assert followed.status_code == 200 and followed.content == (await files.get(hop.headers["location"])).content
        sim.config.faults = {"redirect_bad_scheme": 1.0}
        bad = await files.get(url)
        assert bad.status_code == 302 and bad.headers["location"].startswith(("ftp://", "file://"))
        sim.config.faults = {"truncated": 1.0}
        cut = await files.get(url)
        assert int(cut.headers["content-length"]) > len(cut.content)
    faults = sim.stats()["faults"]
    assert faults == {"expire_first_fetch": 1, "redirect": 2, "redirect_bad_scheme": 1, "truncated": 1}


async def scenario(seed: int) -> dict:
    sim, clock = make(
        seed=seed, latency=1.0, latency_sigma=0.5, failure_rate=0.3, faults={"http_503": 0.3}, output_ttl=60
    )
    async with api_client(sim) as client, files_client(sim) as files:
        for i in range(12):
            await create(client, f"prompt {i % 8}")
            clock.advance(0.1)
        clock.advance(30)
        for run_id in list(sim.runs):
            run = await client.get(f"/runs/{run_id}")
            if run.status_code == 200 and run.json()["status"] == "succeeded":
                await files.get(run.json()["output"]["urls"][0])
    return sim.stats()


@pytest.mark.anyio
async def test_deterministic_under_seed():
    """The same seed and requests give identical runs, outcomes, faults and files; another seed differs."""
    first, second, other = await scenario(7), await scenario(7), await scenario(8)
    assert first == second
    assert {r["status"] for r in first["runs"]} == {"succeeded", "failed"}
    assert first["faults"]["http_503"] > 0 and any(r["files"] for r in first["runs"])
    assert [r["id"] for r in first["runs"]] != [r["id"] for r in other["runs"]]


def test_real_sockets():
    """Over real sockets: create, poll, download from the other loopback origin, stats, aborted answers."""
    sim = Simulator(SimConfig(latency=0.01, outputs_per_run=2))
    with SimulatorServer(sim) as server, httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        assert server.base_url == f"http://127.0.0.1:{server.port}/api/v1"
        run_id = client.post("/runs", json={"model": DEFAULT_MODEL, "input": {"prompt": "x"}}).json()["id"]
        deadline = time.monotonic() + 5
        while (run := client.get(f"/runs/{run_id}").json())["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        urls = run["output"]["urls"]
        assert all(url.startswith(f"http://localhost:{server.port}/files/") for url in urls)
        for url in urls:
            assert png_size(httpx.get(url).content) == (64, 64)
        sim.config.faults = {"reset_after_create": 1.0}
        with pytest.raises(httpx.TransportError):
            client.post("/runs", json={"model": DEFAULT_MODEL, "input": {"prompt": "y"}})
        sim.config.faults = {"truncated": 1.0}
        with pytest.raises(httpx.TransportError):
            client.get(f"/runs/{run_id}")
        stats = httpx.get(f"http://127.0.0.1:{server.port}/_sim/stats").json()
    assert stats["creates"] == 2 and stats["downloads"] == 2 and stats["lost_create_answers"] == 1
    assert stats["auth_on_files"] == 0 and stats["faults"] == {"reset_after_create": 1, "truncated": 1}


def test_real_sockets_slow_answer_and_client_timeout():
    """Over sockets, a client that times out on a slow create leaves a created run with a lost answer,
    and the server notices the hang-up instead of sleeping on."""
    sim = Simulator(SimConfig(faults={"slow": 1.0}, slow_seconds=30.0))
    started = time.monotonic()
    with SimulatorServer(sim) as server, httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/runs", json={"model": DEFAULT_MODEL, "input": {"prompt": "x"}}, timeout=0.2)
        deadline = time.monotonic() + 5
        while sim.stats()["lost_create_answers"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert sim.stats()["creates"] == 1 and time.monotonic() - started < 5


def test_server_start_failure_raises():
    """A port that cannot be bound makes SimulatorServer raise ServerError naming the cause, instead of hanging."""
    with SimulatorServer(Simulator()) as first:
        with pytest.raises(ServerError, match="in use"):
            with SimulatorServer(Simulator(), port=first.port, startup_timeout=5):
                pass
