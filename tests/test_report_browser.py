"""The gallery in a real browser: what a person sees and can do in the page `batchgen report` writes.

Debian's chromium, headless, driven by Playwright for Python (no browser of Playwright's
own). Without chromium these tests skip, except under CI (``CI`` set), where a missing
browser is a failure: .ci/run installs it. Every test leaves a screenshot of the page in
its tmp dir. The batch is a real one (the runner against the simulator, refused prompts,
credits running out, a deleted file); see test_report.make_batch.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchgen.cli import LEDGER_NAME
from batchgen.ledger import Ledger
from batchgen.report import (
    REPORT_NAME,
    EarlierVersion,
    JobRecord,
    ReportData,
    build_report_data,
    write_html,
)
from batchgen.report.render import clean_text
from batchgen.simulator import FAULTS

from .conftest import batchgen_cli
from .test_report import HOSTILE_ERROR, HOSTILE_PROMPT, Batch, make_batch

CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine has no network: no background fetches
    "--disable-component-update",
    "--disable-sync",
]
DEADLINE_MS = 15_000  # generous: waits end as soon as the condition holds


@pytest.fixture(scope="module")
def browser(batch: Batch) -> Iterator[Any]:
    """Debian's chromium, headless. Started after the batch is made: Playwright's sync API keeps an
    event loop running in this thread, inside which the runner's own loop could not start."""
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must install it (apt-get install -y chromium, see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs these tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    """One real batch and its report, shared by the tests that only look."""
    with pytest.MonkeyPatch.context() as patch:  # its own reuse index, as conftest gives each test
        patch.setenv("BATCHGEN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        made = make_batch(tmp_path_factory.mktemp("gallery"))
    result = batchgen_cli("report", "--output", "out", cwd=made.root)
    assert result.returncode == 0, result.stderr
    return made


class Gallery:
    """A page of the gallery open in the browser, with what it requested and any script error."""

    def __init__(self, page: Any, batch: Batch):
        self.page = page
        self.batch = batch
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))

    def open(self, url: str) -> Gallery:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=DEADLINE_MS)
        return self

    def card_ids(self) -> list[str]:
        ids: list[str] = self.page.eval_on_selector_all(
            ".card", "cards => cards.sort((a, b) => a.dataset.pos - b.dataset.pos).map(c => c.dataset.id)"
        )
        return ids

    def card(self, job_id: str) -> Any:
        return self.page.locator(f'.card[data-id="{job_id}"]')

    def stat(self, key: str) -> str:
        text: str = self.page.inner_text(f'[data-stat="{key}"] .value')
        return text

    def filter(self, state: str) -> None:
        self.page.click(f'#filters button[data-state="{state}"]')

    def search(self, text: str) -> None:
        self.page.fill("#search", text)
        self.page.press("#search", "Enter")


@pytest.fixture
def gallery(browser: Any, batch: Batch, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gallery]:
    """The batch's report.html opened from disk; a screenshot is saved in the test's tmp dir at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    opened = Gallery(context.new_page(), batch)
    opened.open((batch.output / REPORT_NAME).resolve().as_uri())
    yield opened
    opened.page.screenshot(path=str(tmp_path / f"{request.node.name}.png"))
    context.close()
    assert not opened.errors, f"script errors in the page: {opened.errors}"


# -- what the page shows -------------------------------------------------------------------


def test_the_header_shows_the_batch_in_figures(gallery: Gallery, batch: Batch):
    """Jobs by state, runs created, double charges and the last run are at the top, as the ledger has them."""
    total = len(batch.records)
    assert gallery.stat("jobs") == str(total)
    assert gallery.stat("succeeded") == str(len(batch.ids("succeeded")) - 1)  # one file deleted
    assert gallery.stat("missing") == "1"
    assert gallery.stat("failed") == str(len(batch.ids("failed")))
    assert gallery.stat("pending") == str(len(batch.ids("pending")))
    assert gallery.stat("runs") == str(batch.sim.stats()["creates"])
    assert gallery.stat("double") == "0"
    stats = batch.sim.stats()
    assert gallery.stat("rate-limited") == str(stats["rate_limited_creates"] + stats["rate_limited_gets"])
    assert gallery.stat("retries") == str(sum(n for fault, n in stats["faults"].items() if fault in FAULTS))
    assert "stopped by the account" in gallery.page.inner_text('[data-stat="last-run"]')
    assert gallery.page.inner_text("#shown") == f"{total} of {total} shown"


def test_every_job_has_a_card_with_its_image_and_details(gallery: Gallery, batch: Batch):
    """One card per job in manifest order; a succeeded card shows its image, id, prompt, options and metadata."""
    assert gallery.card_ids() == list(batch.records)
    job_id = next(j for j in batch.ids("succeeded") if j not in (batch.deleted, batch.hostile))
    record = batch.records[job_id]
    card = gallery.card(job_id)
    assert card.locator(".id").inner_text() == job_id
    assert card.locator(".prompt").inner_text() == record["input"]["prompt"]
    assert record["input"]["aspect_ratio"] in card.locator(".opts").inner_text()
    assert "1 attempt" in card.locator(".opts").inner_text()
    assert f"sku={record['metadata']['sku']}" in card.locator(".meta").inner_text()
    image = card.locator("img")
    assert image.get_attribute("loading") == "lazy"
    image_path = (batch.output / record["outputs"][0]["path"]).resolve()
    assert gallery.page.evaluate("img => img.src", image.element_handle()) == image_path.as_uri()
    gallery.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())


def test_failed_pending_and_missing_cards_show_the_error_and_the_fix(gallery: Gallery, batch: Batch):
    """Each problem card says what is wrong and shows the command that fixes it."""
    manifest = str(batch.manifest)
    for job_id in batch.ids("failed"):
        card = gallery.card(job_id)
        assert card.locator(".badge").inner_text() == "failed"
        assert card.locator(".error").inner_text() == clean_text(batch.records[job_id]["error"])
        assert card.locator(".fix").inner_text() == (
            f"batchgen retry --output out --ids {job_id} && batchgen run {manifest} --output out"
        )
    for job_id in batch.ids("pending"):
        assert gallery.card(job_id).locator(".fix").inner_text() == f"batchgen run {manifest} --output out"
        assert gallery.card(job_id).locator(".what").inner_text() == "Not generated yet"
    missing = gallery.card(batch.deleted)
    assert missing.locator(".badge").inner_text() == "missing"
    assert (
        f"{batch.records[batch.deleted]['outputs'][0]['path']}: not on disk" in missing.locator(".error").inner_text()
    )
    assert missing.locator(".fix").inner_text() == f"batchgen run {manifest} --output out"
    assert "the next run fetches it again" in missing.locator(".what").inner_text()
    assert missing.locator("img").count() == 0
    refused = [j for j in batch.ids("failed") if j != batch.hostile_failed]
    assert "refused by the content policy" in gallery.card(refused[0]).inner_text()


def test_the_state_filter_shows_only_that_state(gallery: Gallery, batch: Batch):
    """Failed shows the failed cards only, Pending the pending ones; All brings every card back."""
    gallery.filter("failed")
    assert gallery.card_ids() == batch.ids("failed")
    assert gallery.page.inner_text("#shown") == f"{len(batch.ids('failed'))} of {len(batch.records)} shown"
    assert gallery.page.get_attribute('#filters button[data-state="failed"]', "aria-pressed") == "true"
    gallery.filter("pending")
    assert gallery.card_ids() == batch.ids("pending")
    gallery.filter("missing")
    assert gallery.card_ids() == [batch.deleted]
    gallery.filter("all")
    assert gallery.card_ids() == list(batch.records)


def test_search_finds_jobs_by_id_prompt_metadata_and_error(gallery: Gallery, batch: Batch):
    """Words typed in the search box narrow the cards to jobs whose id, prompt, metadata or error hold them all."""
    gallery.search("SKU-1004")
    assert gallery.card_ids() == ["item-04"]
    gallery.search("lamps")
    assert gallery.card_ids() == [j for j, r in batch.records.items() if r["metadata"]["category"] == "lamps"]
    gallery.search("studio")
    assert gallery.card_ids() == [j for j, r in batch.records.items() if "studio" in r["input"]["prompt"]]
    gallery.search("content policy")
    assert gallery.card_ids() == [j for j, r in batch.records.items() if "content policy" in (r["error"] or "")]
    gallery.search("item-1 mugs")
    assert gallery.card_ids() == ["item-10", "item-12"]
    gallery.search("no such thing")
    assert gallery.card_ids() == [] and gallery.page.is_visible("#empty")
    gallery.search("")
    assert len(gallery.card_ids()) == len(batch.records)


def test_the_large_view_moves_with_the_arrow_keys_and_closes_with_escape(gallery: Gallery, batch: Batch):
    """A click opens the large view; Right and Left go to the next and previous job; Escape closes it."""
    ids = list(batch.records)
    page = gallery.page
    gallery.card(ids[0]).locator(".id").click()
    page.wait_for_selector("#viewer[open]", timeout=DEADLINE_MS)
    assert page.inner_text("#v-pos") == f"1 of {len(ids)}"
    assert page.inner_text("#v-info h2") == ids[0]
    assert page.inner_text("#v-info .full-prompt") == batch.records[ids[0]]["input"]["prompt"]
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#v-info h2") == ids[1] and page.inner_text("#v-pos") == f"2 of {len(ids)}"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    assert page.inner_text("#v-info h2") == ids[1]
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")  # at the first job: stays
    assert page.inner_text("#v-info h2") == ids[0]
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden", timeout=DEADLINE_MS)
    assert page.evaluate("document.activeElement.dataset.id") == ids[0]


def test_the_large_view_shows_the_whole_job_and_follows_the_filter(gallery: Gallery, batch: Batch):
    """Under a filter, next and previous stay within it; a failed job's view shows its whole error and fix."""
    failed = batch.ids("failed")
    gallery.filter("failed")
    page = gallery.page
    gallery.card(failed[0]).locator(".more").click()
    page.wait_for_selector("#viewer[open]", timeout=DEADLINE_MS)
    seen = [page.inner_text("#v-info h2")]
    for _ in failed[1:]:
        page.keyboard.press("ArrowRight")
        seen.append(page.inner_text("#v-info h2"))
    assert seen == failed and page.is_disabled("#v-next")
    assert page.inner_text("#v-info .error") == clean_text(batch.records[failed[-1]]["error"])
    assert page.inner_text("#v-info .fix").startswith(f"batchgen retry --output out --ids {failed[-1]} && ")
    page.click("#v-close")
    page.wait_for_selector("#viewer", state="hidden", timeout=DEADLINE_MS)


def test_copy_ids_gives_a_list_for_retry(gallery: Gallery, batch: Batch):
    """'Copy ids' puts the shown jobs' ids, comma-separated, on the clipboard: ready for `retry --ids`."""
    gallery.filter("failed")
    gallery.page.click("#copy-ids")
    expected = ",".join(batch.ids("failed"))
    gallery.page.wait_for_function(
        "() => document.getElementById('copied-status').textContent.startsWith('Copied')", timeout=DEADLINE_MS
    )
    assert gallery.page.evaluate("navigator.clipboard.readText()") == expected
    assert gallery.page.input_value("#copied-ids") == expected
    assert gallery.page.inner_text("#copied-status") == f"Copied {len(batch.ids('failed'))} ids to the clipboard."
    assert f"batchgen retry --output out --ids {expected}" in gallery.page.inner_text("#copied-command")


def test_prompts_and_errors_show_as_text_and_run_nothing(gallery: Gallery, batch: Batch):
    """A prompt holding <script> and an error holding HTML and terminal escapes are shown as text; no script runs."""
    page = gallery.page
    assert page.evaluate("window.__pwned") is None
    hostile = gallery.card(batch.hostile)
    assert hostile.locator(".prompt").inner_text() == clean_text(HOSTILE_PROMPT)
    assert "<script>window.__pwned = 1</script>" in hostile.locator(".prompt").inner_text()
    for job_id in batch.ids("failed"):
        assert "\x1b" not in gallery.card(job_id).inner_text()  # the server's escapes are gone
    failed = gallery.card(batch.hostile_failed)
    assert failed.locator(".error").inner_text() == clean_text(HOSTILE_ERROR)
    assert "\x1b" not in failed.inner_text() and "\x07" not in failed.inner_text()
    assert page.locator("main b, main script").count() == 0
    hostile.locator(".id").click()
    page.wait_for_selector("#viewer[open]", timeout=DEADLINE_MS)
    assert "<script>window.__pwned = 1</script>" in page.inner_text("#v-info .full-prompt")
    assert page.evaluate("window.__pwned") is None


def test_the_page_requests_nothing_but_its_own_files(gallery: Gallery, batch: Batch):
    """Opened from disk, the page asks for no URL other than its own file and the images beside it."""
    gallery.page.mouse.wheel(0, 5000)
    gallery.page.wait_for_function("() => document.body.dataset.ready === 'true'")
    assert gallery.requests
    folder = batch.output.resolve().as_uri() + "/"
    assert all(url.startswith(folder) for url in gallery.requests), gallery.requests


# -- sizes, scale and earlier versions -----------------------------------------------------


@pytest.fixture
def served(batch: Batch) -> Iterator[str]:
    """The output folder served over HTTP on loopback (a free port), to hold back image loads."""
    handler = functools.partial(_QuietHandler, directory=str(batch.output))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{REPORT_NAME}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_thumbnails_are_sized_from_the_aspect_ratio_before_they_load(
    browser: Any, batch: Batch, served: str, tmp_path: Path
):
    """With every image held back, each thumbnail already has its final size, in the image's proportions."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.route("**/*.png", lambda route: route.abort())
    gallery = Gallery(page, batch).open(served)
    boxes = page.eval_on_selector_all(
        ".card img",
        "imgs => imgs.map(i => [i.closest('.card').dataset.id, i.naturalWidth, i.getBoundingClientRect().width,"
        " i.getBoundingClientRect().height])",
    )
    assert boxes
    for job_id, natural, width, height in boxes:
        assert natural == 0, "the image was held back"
        ratio_w, ratio_h = (int(n) for n in batch.records[job_id]["input"]["aspect_ratio"].split(":"))
        assert width > 50 and height > 50
        assert abs(width / height - ratio_w / ratio_h) < 0.02, (job_id, width, height)
    before = {b[0]: (b[2], b[3]) for b in boxes}
    page.unroute("**/*.png")
    gallery.open(served)  # over HTTP the images come from the page's own origin
    page.wait_for_function("() => [...document.querySelectorAll('.card img')].every(i => i.naturalWidth > 0)")
    after = page.eval_on_selector_all(
        ".card img",
        "imgs => imgs.map(i => [i.closest('.card').dataset.id, i.getBoundingClientRect().width,"
        " i.getBoundingClientRect().height])",
    )
    assert {a[0]: (a[1], a[2]) for a in after} == before
    page.screenshot(path=str(tmp_path / "sized-before-load.png"))
    context.close()
    # The held-back images are the only thing that failed to load.
    assert all("Failed to load resource" in error for error in gallery.errors), gallery.errors


def _collected(batch: Batch) -> ReportData:
    with Ledger(batch.output / LEDGER_NAME, readonly=True) as ledger:
        return build_report_data(ledger, batch.output)


def test_ten_thousand_jobs_keep_only_the_visible_cards_in_the_page(browser: Any, batch: Batch, tmp_path: Path):
    """With 10,000 jobs only a few rows of cards exist at a time; scrolling to the end shows the last job."""
    data = _collected(batch)
    jobs = [dataclasses.replace(data.jobs[i % len(data.jobs)], job_id=f"bulk-{i:05d}") for i in range(10_000)]
    path = batch.output / "bulk.html"
    write_html(ReportData(data.summary, jobs), path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    gallery = Gallery(context.new_page(), batch).open(path.resolve().as_uri())
    page = gallery.page
    assert page.inner_text("#shown") == "10,000 of 10,000 shown"
    assert 0 < page.locator(".card").count() < 100
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_selector('.card[data-id="bulk-09999"]', timeout=DEADLINE_MS)
    assert page.locator(".card").count() < 100
    gallery.search("bulk-04321")
    assert gallery.card_ids() == ["bulk-04321"]
    page.screenshot(path=str(tmp_path / "ten-thousand.png"))
    context.close()
    assert not gallery.errors, gallery.errors


def test_the_large_view_shows_earlier_versions_of_a_regenerated_image(browser: Any, batch: Batch, tmp_path: Path):
    """A job with an earlier version lists it in the large view; choosing it shows that image, then back."""
    data = _collected(batch)
    index, job = next((i, j) for i, j in enumerate(data.jobs) if j.card_state == "succeeded")
    earlier_path = f"earlier/{job.job_id}.1.png"
    (batch.output / "earlier").mkdir(exist_ok=True)
    shutil.copy(batch.output / job.outputs[0].path, batch.output / earlier_path)
    regenerated: JobRecord = dataclasses.replace(
        job, earlier=(EarlierVersion(path=earlier_path, replaced_at=data.summary.generated_at - 3600),)
    )
    jobs = [*data.jobs[:index], regenerated, *data.jobs[index + 1 :]]
    path = batch.output / "versions.html"
    write_html(ReportData(data.summary, jobs), path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    gallery = Gallery(context.new_page(), batch).open(path.resolve().as_uri())
    page = gallery.page
    assert "1 earlier" in gallery.card(job.job_id).locator(".opts").inner_text()
    gallery.card(job.job_id).locator(".id").click()
    page.wait_for_selector("#viewer[open]", timeout=DEADLINE_MS)
    assert "Earlier versions (1)" in page.text_content("#v-info")
    page.locator(".versions button").nth(1).click()
    assert page.evaluate("document.querySelector('#v-figure img').src").endswith(earlier_path)
    assert page.inner_text("#v-figure figcaption").startswith("Earlier version, replaced ")
    page.screenshot(path=str(tmp_path / "earlier-version.png"))
    page.locator(".versions button").nth(0).click()
    assert page.evaluate("document.querySelector('#v-figure img').src").endswith(job.outputs[0].path)
    context.close()
    assert not gallery.errors, gallery.errors
