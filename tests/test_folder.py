"""The output folder's own housekeeping: partial downloads a crashed run left are removed, nothing else."""

from __future__ import annotations

from pathlib import Path

from batchgen.folder import OutputFolder
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
