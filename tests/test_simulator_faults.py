"""The simulator off the happy path: eventually consistent reads, odd run ids, output URLs and
bodies that are not the image, several outputs per run, error text that echoes the key or
carries terminal escapes. Each fault is checked on a hand-moved clock, in-process."""

from __future__ import annotations

import ast
import base64
import hashlib
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from batchgen import simulator
from batchgen.models import DEFAULT_MODEL
from batchgen.simulator import (
    ALL_FAULTS,
    CATALOGUE,
    FAULTS,
    OFF_PATH_FAULTS,
    RUN_FAULTS,
    SimConfig,
    Simulator,
    SimulatorServer,
)
from batchgen.simulator.faults import ODD_ID_TEMPLATES
from batchgen.simulator.wire import split_path

from .conftest import outputs_of_one_run
from .simkit import API_KEY, AUTH, PNG_SIGNATURE, api_client, create, files_client, finished, make, png_size

ESC = "\x1b"
PLAIN_ID = re.compile(r"run_[a-z2-7]{50}")


@pytest.fixture
def anyio_backend():
    return "asyncio"


# --- eventually consistent reads ---


@pytest.mark.anyio
async def test_a_new_run_answers_404_for_a_while():
    """not_found_after_create: polls answer 404 'run not found' for not_found_seconds, then the run is there."""
    sim, clock = make(faults={"not_found_after_create": 1.0}, not_found_seconds=2.0, latency=0.5)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        early = [await client.get(f"/runs/{run_id}")]
        clock.advance(1.9)
        early.append(await client.get(f"/runs/{run_id}"))
        clock.advance(0.1)
        later = await client.get(f"/runs/{run_id}")
    assert [r.status_code for r in early] == [404, 404]
    assert early[0].json() == {"error": "run not found"}
    assert later.status_code == 200 and later.json()["status"] == "succeeded"
    stats = sim.stats()
    assert stats["faults"] == {"not_found_after_create": 1 + 2}  # once for the run, once per 404
    assert stats["runs"][0]["run_faults"] == ["not_found_after_create"] and stats["runs"][0]["polls"] == 3


@pytest.mark.anyio
async def test_per_run_faults_follow_the_input_not_the_arrival_order():
    """Per-run faults are drawn from the seed and the run's input: created in another order, the same runs get them."""
    prompts = [f"prompt {i}" for i in range(30)]
    config = {"faults": {"not_found_after_create": 0.5}, "seed": 11}

    async def faulty(order: list[str]) -> set[str]:
        sim, _ = make(**config)
        async with api_client(sim) as client:
            for prompt in order:
                await create(client, prompt)
        return {r["prompt"] for r in sim.stats()["runs"] if r["run_faults"]}

    forward, backward = await faulty(prompts), await faulty(prompts[::-1])
    assert forward == backward and 0 < len(forward) < len(prompts)


# --- output bodies that are not the image ---


async def succeeded_url(sim: Simulator, clock, client: httpx.AsyncClient) -> str:
    run = await finished(client, clock, (await create(client)).json()["id"])
    return run["output"]["urls"][0]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "content_type", "marker"),
    [
        ("body_html_login", "text/html", b"Sign in"),
        ("body_xml_error", "application/xml", b"<Error><Code>AccessDenied</Code>"),
        ("body_empty", "image/png", b""),
        ("body_svg_script", "image/svg+xml", b"<script"),
        ("body_bin", "application/octet-stream", b"\x00BIN"),
    ],
)
async def test_hostile_bodies_answer_200_with_something_that_is_not_the_image(fault, content_type, marker):
    """Each hostile body fault answers 200 with its content type and a body no image format starts with."""
    sim, clock = make(faults={fault: 1.0})
    async with api_client(sim) as client, files_client(sim) as files:
        answer = await files.get(await succeeded_url(sim, clock, client))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith(content_type)
    assert marker in answer.content
    assert not answer.content.startswith((PNG_SIGNATURE, b"\xff\xd8\xff", b"RIFF"))
    assert int(answer.headers["content-length"]) == len(answer.content)
    if fault == "body_bin":
        assert 'filename="output.bin"' in answer.headers["content-disposition"]
    stats = sim.stats()
    assert stats["faults"] == {fault: 1} and stats["downloads"] == 0 and stats["runs"][0]["files"] == []


@pytest.mark.anyio
async def test_a_cut_image_starts_like_the_png_and_declares_its_own_short_length():
    """body_cut_image answers 200 with the PNG's first half, Content-Length saying just that: only its end is wrong."""
    sim, clock = make(faults={"body_cut_image": 1.0})
    async with api_client(sim) as client, files_client(sim) as files:
        answer = await files.get(await succeeded_url(sim, clock, client))
    assert answer.status_code == 200 and answer.content.startswith(PNG_SIGNATURE)
    assert int(answer.headers["content-length"]) == len(answer.content) and b"IEND" not in answer.content
    assert sim.stats()["faults"] == {"body_cut_image": 1} and sim.stats()["downloads"] == 0


@pytest.mark.anyio
async def test_file_unavailable_answers_503_to_file_fetches_only():
    """file_unavailable: the file host answers 503 while creates and polls go through."""
    sim, clock = make(faults={"file_unavailable": 1.0})
    async with api_client(sim) as client, files_client(sim) as files:
        answer = await files.get(await succeeded_url(sim, clock, client))
    assert answer.status_code == 503
    assert sim.stats()["faults"] == {"file_unavailable": 1} and sim.stats()["downloads"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("fault", "statuses"), [("file_forbidden", {403}), ("file_gone", {404, 410})])
async def test_a_refusing_file_host_refuses_fresh_links_too(fault, statuses):
    """file_forbidden and file_gone: every fetch of every link is refused, those of a fresh answer too,
    while creates and polls go through."""
    sim, clock = make(faults={fault: 1.0}, output_ttl=60.0)
    async with api_client(sim) as client, files_client(sim) as files:
        run_id = (await create(client)).json()["id"]
        links = [(await finished(client, clock, run_id))["output"]["urls"][0]]
        clock.advance(1.0)
        links.append((await client.get(f"/runs/{run_id}")).json()["output"]["urls"][0])
        answers = [await files.get(url) for url in links for _ in range(3)]
    assert links[0] != links[1]
    assert {a.status_code for a in answers} <= statuses and sim.stats()["faults"] == {fault: 6}
    assert sim.stats()["downloads"] == 0


@pytest.mark.anyio
async def test_later_output_gone_kills_every_output_but_the_first():
    """later_output_gone: a run's first output is served, each later one answers 410 on every fetch."""
    sim, clock = make(faults={"later_output_gone": 1.0}, outputs_per_run=3)
    async with api_client(sim) as client, files_client(sim) as files:
        run = await finished(client, clock, (await create(client)).json()["id"])
        answers = [await files.get(url) for url in run["output"]["urls"] * 2]
    assert [a.status_code for a in answers] == [200, 410, 410] * 2
    assert answers[0].content.startswith(PNG_SIGNATURE)
    assert sim.stats()["faults"] == {"later_output_gone": 4} and sim.stats()["downloads"] == 2


@pytest.mark.anyio
async def test_huge_body_streams_without_a_length():
    """body_huge streams huge_body_bytes that start like a PNG, with no Content-Length to refuse it by."""
    size = 3 * 1024 * 1024 + 5
    sim, clock = make(faults={"body_huge": 1.0}, huge_body_bytes=size)
    async with api_client(sim) as client, files_client(sim) as files:
        url = await succeeded_url(sim, clock, client)
        async with files.stream("GET", url) as answer:
            assert answer.status_code == 200 and "content-length" not in answer.headers
            received, first = 0, b""
            async for chunk in answer.aiter_raw():
                first = first or chunk[:8]
                received += len(chunk)
    assert received == size and first == PNG_SIGNATURE
    assert sim.stats()["downloads"] == 0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
async def test_png_labelled_octet_stream_is_the_real_image():
    """png_octet_stream serves the very PNG a clean fetch gets, labelled application/octet-stream."""
    sim, clock = make()
    async with api_client(sim) as client, files_client(sim) as files:
        url = await succeeded_url(sim, clock, client)
        clean = (await files.get(url)).content
        sim.config.faults = {"png_octet_stream": 1.0}
        labelled = await files.get(url)
    assert labelled.headers["content-type"] == "application/octet-stream" and labelled.content == clean
    assert png_size(clean) == (64, 64)
    stats = sim.stats()  # both fetches served the image: a client that keeps it keeps what was sent
    assert stats["downloads"] == 2 and [f["sha256"] for f in stats["runs"][0]["files"]] == [sha256(clean)]


# --- output URLs that are not http(s), or missing ---


@pytest.mark.anyio
async def test_data_and_file_output_urls():
    """output_data_url: data: URLs holding the PNGs; output_file_url: file:// URLs; both per run, on every poll."""
    sim, clock = make(faults={"output_data_url": 1.0}, outputs_per_run=2)
    async with api_client(sim) as client:
        run_id = (await create(client)).json()["id"]
        urls = (await finished(client, clock, run_id))["output"]["urls"]
        again = (await client.get(f"/runs/{run_id}")).json()["output"]["urls"]
    assert len(urls) == 2 and urls == again and all(url.startswith("data:image/png;base64,") for url in urls)
    images = [base64.b64decode(url.partition(",")[2]) for url in urls]
    assert [png_size(image) for image in images] == [(64, 64), (64, 64)] and images[0] != images[1]
    sim, clock = make(faults={"output_file_url": 1.0})
    async with api_client(sim) as client:
        urls = (await finished(client, clock, (await create(client)).json()["id"]))["output"]["urls"]
    assert urls == ["file:///etc/passwd"]


@pytest.mark.anyio
async def test_succeeded_runs_without_urls():
    """no_output_urls: succeeded runs whose output has no URL (empty list, no urls, null output, or no output)."""
    sim, clock = make(faults={"no_output_urls": 1.0}, seed=3)
    shapes = set()
    async with api_client(sim) as client:
        for i in range(24):
            run = await finished(client, clock, (await create(client, f"p{i}")).json()["id"])
            assert run["status"] == "succeeded"
            output = run.get("output", "absent")
            assert not (isinstance(output, dict) and output.get("urls"))
            shapes.add(repr(output))
    assert shapes == {"{'urls': []}", "{}", "None", "'absent'"}


@pytest.mark.anyio
async def test_outputs_per_run_range_is_drawn_per_run():
    """outputs_per_run '1-4': each run has 1 to 4 URLs, counts vary, each URL serves a different PNG."""
    sim, clock = make(outputs_per_run="1-4", seed=5)
    async with api_client(sim) as client, files_client(sim) as files:
        counts = []
        for i in range(20):
            urls = (await finished(client, clock, (await create(client, f"p{i}")).json()["id"]))["output"]["urls"]
            images = {(await files.get(url)).content for url in urls}
            assert len(images) == len(urls)
            counts.append(len(urls))
    assert set(counts) == {1, 2, 3, 4}
    assert [r["outputs"] for r in sim.stats()["runs"]] == counts
    with pytest.raises(ValueError, match="outputs_per_run"):
        SimConfig(outputs_per_run="4-1")


# --- run ids that URL normalisation would break ---


def segment(run_id: str) -> str:
    """A run id as one path segment, dots included, as a careful client sends it."""
    return quote(run_id, safe="").replace(".", "%2E")


async def odd_runs(sim: Simulator) -> dict[str, str]:
    """Create runs until every odd id template has been handed out: template -> run id."""
    seen: dict[str, str] = {}
    async with api_client(sim) as client:
        for i in range(400):
            run_id = (await create(client, f"p{i}")).json()["id"]
            seen.setdefault(next(t for t in ODD_ID_TEMPLATES if _matches(t, run_id)), run_id)
            if len(seen) == len(ODD_ID_TEMPLATES):
                return seen
    raise AssertionError(f"only {sorted(seen)} seen")


def _matches(template: str, run_id: str) -> bool:
    if "{id}" not in template:
        return run_id == template
    head, _, tail = template.partition("{id}")
    inner = run_id[len(head) : len(run_id) - len(tail)]
    return run_id.startswith(head) and run_id.endswith(tail) and PLAIN_ID.fullmatch(inner) is not None


@pytest.mark.anyio
async def test_odd_ids_route_as_one_quoted_segment_and_only_so():
    """Every odd id reaches its run as one quoted path segment; sent unquoted, or by its inner plain id, it does not."""
    sim, clock = make(faults={"odd_run_id": 1.0}, seed=2)
    runs = await odd_runs(sim)
    clock.advance(10)
    async with api_client(sim) as client:
        for run_id in runs.values():
            quoted = await client.get("/runs/" + segment(run_id))
            assert quoted.status_code == 200 and quoted.json()["id"] == run_id, run_id
            naive = await client.get("/runs/" + run_id)  # httpx drops dot segments, splits off ? and #
            assert naive.status_code == 404, run_id
            inner = PLAIN_ID.search(run_id)
            if inner:  # the plain id inside is not another name for the run
                assert (await client.get("/runs/" + inner[0])).status_code == 404, run_id
    assert sim.stats()["faults"]["odd_run_id"] == len(sim.runs)


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        ("/api/v1/runs/%2E%2E", ("api", "v1", "runs", "..")),
        ("/api/v1/runs/..", ("api", "v1")),
        ("/api/v1/runs/a%2Fb", ("api", "v1", "runs", "a/b")),
        ("/api/v1/runs/a/b", ("api", "v1", "runs", "a", "b")),
        ("/api/v1/runs/%3Fx", ("api", "v1", "runs", "?x")),
        ("/api/v1/runs/%252e", ("api", "v1", "runs", "%2e")),
        ("/api/v1/./runs/x/../y", ("api", "v1", "runs", "y")),
    ],
)
def test_a_raw_path_is_split_then_decoded_once(raw, segments):
    """Dot segments in the raw path are removed as a proxy would; a quoted one stays, decoded exactly once."""
    assert split_path(raw) == segments


def test_odd_ids_over_real_sockets():
    """Over sockets (uvicorn's raw path) every quoted odd id reaches its run too."""
    sim = Simulator(SimConfig(faults={"odd_run_id": 1.0}, latency=0.0, seed=2))
    with SimulatorServer(sim) as server, httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        for i in range(12):
            run_id = client.post("/runs", json={"model": DEFAULT_MODEL, "input": {"prompt": f"p{i}"}}).json()["id"]
            got = client.get("/runs/" + segment(run_id))
            assert got.status_code == 200 and got.json()["id"] == run_id, run_id


# --- error text: echoed headers, terminal escapes ---


@pytest.mark.anyio
async def test_error_bodies_echo_the_request_headers_with_the_key():
    """echo_headers: 400, 401, 402 and 500 bodies carry the request's headers, Authorization: Bearer <key> included."""
    sim, _ = make(faults={"echo_headers": 1.0}, api_key=API_KEY, credits=0)
    async with api_client(sim) as client:
        wrong_key = await create(client, headers={"Authorization": "Bearer sk-wrong-0123"})
        bad = await client.post("/runs", json={"model": "nope"})
        no_credits = await create(client)
        sim.config.faults["http_500"] = 1.0
        server_error = await create(client)
        sim.config.faults = {"echo_headers": 1.0}
        missing = await client.get("/runs/run_unknown")
    assert "Bearer sk-wrong-0123" in wrong_key.json()["error"]["message"]
    for answer, status in ((bad, 400), (no_credits, 402), (server_error, 500)):
        error = answer.json()["error"]
        assert answer.status_code == status and f"Bearer {API_KEY}" in error["message"]
        assert error["request"]["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in missing.text  # a 404 echoes nothing
    assert sim.stats()["faults"]["echo_headers"] == 4


@pytest.mark.anyio
async def test_error_text_carries_terminal_escapes():
    """control_chars: error messages and failed runs' errors hold ESC sequences; successful answers none."""
    sim, clock = make(faults={"control_chars": 1.0}, failure_rate=1.0)
    async with api_client(sim) as client:
        bad = await client.post("/runs", json={"model": "nope"})
        failed = await finished(client, clock, (await create(client)).json()["id"])
    assert ESC + "[" in bad.json()["error"]["message"] and "model" in bad.json()["error"]["message"]
    assert ESC + "]0;" in failed["error"]["message"] and "generation failed" in failed["error"]["message"]
    sim, clock = make(faults={"control_chars": 1.0})
    async with api_client(sim) as client:
        ok = await finished(client, clock, (await create(client)).json()["id"])
    assert ESC not in str(ok)


def test_run_faults_are_in_the_catalogue():
    """Every per-run fault is a fault name that SimConfig accepts."""
    assert all(SimConfig(faults={name: 1.0}) for name in RUN_FAULTS)


@pytest.mark.anyio
async def test_saved_bytes_match_the_recorded_sha256():
    """What a clean fetch serves is recorded with its sha256, so tests can compare saved files with it."""
    sim, clock = make(outputs_per_run=2)
    bodies = await outputs_of_one_run(sim, clock)
    files_seen = sim.stats()["runs"][0]["files"]
    assert [f["sha256"] for f in files_seen] == [hashlib.sha256(body).hexdigest() for body in bodies]


def test_fault_groups_split_the_catalogue():
    """FAULTS (survived by retrying) and OFF_PATH_FAULTS (hostile answers) split the catalogue; SimConfig takes all."""
    assert set(FAULTS) | set(OFF_PATH_FAULTS) == set(CATALOGUE) == set(ALL_FAULTS)
    assert not set(FAULTS) & set(OFF_PATH_FAULTS) and set(RUN_FAULTS) <= set(OFF_PATH_FAULTS)
    assert SimConfig(faults=dict.fromkeys(ALL_FAULTS, 0.5)).faults


def test_the_package_exports_what_it_lists():
    """Every name in batchgen.simulator.__all__ resolves, and type checkers see the same list."""
    for name in simulator.__all__:
        assert getattr(simulator, name) is not None, name
    tree = ast.parse(Path(simulator.__file__).read_text(encoding="utf-8"))
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
    seen = {alias.name for imp in guarded.body if isinstance(imp, ast.ImportFrom) for alias in imp.names}
    assert seen == set(simulator.__all__)
