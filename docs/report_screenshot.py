"""Make docs/report.png, the README's picture of the gallery, from a real run.

In a fresh temporary folder holding a copy of manifests/example.yaml, this runs

    batchgen run manifests/example.yaml --simulate
    batchgen report

and photographs output/report.html in Debian's chromium, headless (Playwright):

    python docs/report_screenshot.py                     # writes docs/report.png
    python docs/report_screenshot.py --out /tmp/r.png --large-view

Needs chromium (`apt-get install -y chromium`) and the test extra (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def batchgen(folder: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBASE_")}
    env["PYTHONPATH"] = str(REPO)
    env["BATCHGEN_CACHE_DIR"] = str(folder / "cache")  # a fresh run, reusing no image of the user's
    print("$ batchgen " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "batchgen", *args], cwd=folder, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Photograph a real report made with --simulate.")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=860)
    parser.add_argument("--large-view", action="store_true", help="open the first card's large view first")
    args = parser.parse_args()
    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="batchgen-screenshot-") as temp:
        folder = Path(temp)
        (folder / "manifests").mkdir()
        shutil.copy(REPO / "manifests" / "example.yaml", folder / "manifests" / "example.yaml")
        batchgen(folder, "run", "manifests/example.yaml", "--simulate", "--no-progress")
        batchgen(folder, "report")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto((folder / "output" / "report.html").as_uri())
            page.wait_for_selector("body[data-ready=true]")
            page.wait_for_function("() => [...document.querySelectorAll('.card img')].every(i => i.complete)")
            if args.large_view:
                page.locator(".card .id").first.click()
                page.wait_for_selector("#viewer[open]")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
