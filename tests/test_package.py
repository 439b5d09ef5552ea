"""The package's public names: one list, each importable, each from the module that owns it."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import batchgen


def test_all_lists_exactly_what_the_package_exports():
    """Every name in __all__ resolves; the names type checkers see are the same list."""
    for name in batchgen.__all__:
        assert getattr(batchgen, name) is not None, name
    tree = ast.parse(Path(batchgen.__file__).read_text(encoding="utf-8"))
    type_checking = next(
        node for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    )
    seen = {alias.name for imp in type_checking.body if isinstance(imp, ast.ImportFrom) for alias in imp.names}
    assert seen | {"__version__"} == set(batchgen.__all__)


def test_each_public_name_comes_from_its_own_module():
    """A public name is the object its module defines, not a copy or a re-export of another module's."""
    for name, module in batchgen._EXPORTS.items():
        owner = importlib.import_module(f"batchgen.{module}")
        assert getattr(batchgen, name) is getattr(owner, name)
        assert getattr(owner, name).__module__ == f"batchgen.{module}", name


def test_an_unknown_name_is_an_attribute_error():
    """Asking the package for a name it does not export fails like any module."""
    try:
        batchgen.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_commands_that_send_nothing_load_no_http_stack(tmp_path):
    """`--help`, `validate`, `run --dry-run` and `status` start without importing httpx, aiohttp or the runner
    (hundreds of milliseconds at every start), and the CLI's copy of the ledger's name is the ledger's."""
    from batchgen.cli import LEDGER_NAME
    from batchgen.models import LEDGER_NAME as OWN_NAME

    assert LEDGER_NAME == OWN_NAME
    example = Path(__file__).resolve().parent.parent / "manifests" / "example.yaml"
    for argv in (
        ["--help"],
        ["validate", str(example)],
        ["run", str(example), "--dry-run", "--output", str(tmp_path / "out")],
        ["status", "--output", str(tmp_path / "out")],
    ):
        probe = (
            "import sys\nfrom batchgen.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({'httpx', 'aiohttp', 'batchgen.runner', 'batchgen.api'} & set(sys.modules))\n"
            "print('loaded:', heavy)"
        )
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
        assert done.stdout.strip().endswith("loaded: []"), (argv, done.stdout[-500:], done.stderr[-500:])
