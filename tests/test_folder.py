"""The output folder's own housekeeping: partial downloads a crashed run left are removed, nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.folder import CLEAN_MARK, STATE_DIR, OutputFolder
from batchgen.outputs import TEMP_PREFIX, TEMP_SUFFIX


def test_stale_partials_are_removed_in_every_subfolder_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    partials = [
        out / f"{TEMP_PREFIX}lamp{TEMP_SUFFIX}",
        out / "home" / "textiles" / f"{TEMP_PREFIX}throw{TEMP_SUFFIX}",
        out / ".batchgen" / "versions" / "lamp" / "1" / f"{TEMP_PREFIX}old{TEMP_SUFFIX}",
    ]
    kept = [
        out / "lamp.png",
        out / "home" / "textiles" / "throw.png",
        out / f"{TEMP_PREFIX}note.txt",  # the prefix alone is not a partial download
        out / f"someone-else{TEMP_SUFFIX}",  # nor the suffix alone
        out / "home" / f"{TEMP_PREFIX}folder{TEMP_SUFFIX}" / "inside.png",  # a folder so named is left alone
    ]
    for path in partials + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    outside = tmp_path / f"{TEMP_PREFIX}outside{TEMP_SUFFIX}"
    outside.write_bytes(b"x")
    (out / "link").symlink_to(tmp_path, target_is_directory=True)  # never followed out of the folder

    folder = OutputFolder(out)
    folder.lock()
    assert folder.remove_stale_partials() == len(partials)
    assert not any(path.exists() for path in partials)
    assert all(path.exists() for path in kept) and outside.exists()
    assert folder.remove_stale_partials() == 0


def test_a_partial_left_by_a_killed_run_is_removed_even_after_a_clean_finish(tmp_path: Path) -> None:
    """A run that ends cleanly leaves the mark that spares the next run its search for partials; the next
    run to take the lock removes the mark first, so when that one is killed mid-download the run after
    it searches again and removes its partial file."""
    out = tmp_path / "out"
    folder = OutputFolder(out)
    folder.lock()
    folder.remove_stale_partials()
    folder.close()
    assert (out / STATE_DIR / CLEAN_MARK).is_file()
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "from pathlib import Path\n"
            "from batchgen.folder import OutputFolder\n"
            "from batchgen.outputs import PartialFile\n"
            "folder = OutputFolder(Path(sys.argv[1]))\n"
            "folder.lock()\n"
            "folder.remove_stale_partials()\n"
            "PartialFile(Path(sys.argv[1]), 'lamp').write(b'half an image')\n"
            "os._exit(9)  # killed: no cleanup of any kind\n",
            str(out),
        ],
        check=False,
    )
    assert killed.returncode == 9
    (partial,) = out.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}")
    assert not (out / STATE_DIR / CLEAN_MARK).exists()
    folder = OutputFolder(out)
    folder.lock()
    assert folder.remove_stale_partials() == 1 and not partial.exists()
    folder.close()


def test_a_folder_closed_on_the_way_out_of_an_error_is_searched_next_time(tmp_path: Path) -> None:
    """Closing the folder while an exception is on its way leaves no mark: the next run looks for partials."""
    out = tmp_path / "out"
    folder = OutputFolder(out)
    with pytest.raises(RuntimeError), folder:
        folder.lock()
        folder.remove_stale_partials()
        raise RuntimeError("the run failed")
    assert not (out / STATE_DIR / CLEAN_MARK).exists()
    (out / f"{TEMP_PREFIX}left{TEMP_SUFFIX}").write_bytes(b"x")
    with OutputFolder(out) as again:
        again.lock()
        assert again.remove_stale_partials() == 1
