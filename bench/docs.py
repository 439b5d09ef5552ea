"""Regenerate the documents' figures from bench/results/*.json, and nothing else.

    python bench/docs.py            # rewrite bench/RESULTS.md, bench/RELIABILITY.md and the README's figures
    python bench/docs.py --check    # exit 1, naming each document that differs (what CI runs)

Every table names the results file it was computed from, the command that made that file
and the commit it measured. The README's figures sit between ``<!-- docs.py:NAME -->`` and
``<!-- /docs.py:NAME -->``; everything outside those markers is left as it is. The format of
a results file, and how to add a series and its section here: bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The readers and formatting (docs_common), then one module per document.
from docs_common import REPO, Result, load  # noqa: E402
from docs_readme import README_BLOCKS, fill_markers  # noqa: E402
from docs_reliability import reliability_md  # noqa: E402
from docs_results import results_md  # noqa: E402

# -- entry point ---------------------------------------------------------------------------------------


def render_all(results: list[Result] | None = None, repo: Path = REPO) -> dict[Path, str]:
    """Every generated document: path -> its full text."""
    results = load() if results is None else results
    readme = repo / "README.md"
    blocks = {name: make(results) for name, make in README_BLOCKS.items()}
    return {
        repo / "bench" / "RESULTS.md": results_md(results),
        repo / "bench" / "RELIABILITY.md": reliability_md(results),
        readme: fill_markers(readme.read_text(encoding="utf-8"), blocks),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a document differs")
    args = parser.parse_args()
    differ = []
    for path, text in render_all().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        differ.append(path.relative_to(REPO).as_posix())
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and differ:
        print("not what bench/docs.py makes from bench/results/: " + ", ".join(differ), file=sys.stderr)
        print("run `python bench/docs.py` and commit the result", file=sys.stderr)
        return 1
    for name in differ:
        print(f"rewrote {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
