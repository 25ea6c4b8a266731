"""A missing extra is named, at the import and at the command line (issue 19)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BLOCK = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if any(name == b or name.startswith(b + '.') for b in {blocked!r}):\n"
    "            raise ModuleNotFoundError('No module named ' + repr(name), name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run(blocked: tuple[str, ...], body: str) -> subprocess.CompletedProcess[str]:
    probe = BLOCK.format(blocked=blocked) + body
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(("module", "package", "extra"), [
    ("dtxn.runtime.transport.nats", "nats", "nats"),
    ("dtxn.runtime.resources.postgres", "asyncpg", "postgres"),
])
def test_importing_a_part_without_its_extra_names_the_extra(
    module: str, package: str, extra: str
) -> None:
    result = _run((package,), (
        "from dtxn.runtime.extras import MissingExtra\n"
        "try:\n"
        f"    import {module}\n"
        "except MissingExtra as e:\n"
        "    print(type(e).__name__, e.extra, e.package, isinstance(e, ImportError))\n"
        "    print(e)\n"
    ))
    assert result.returncode == 0, result.stderr
    first, message = result.stdout.splitlines()
    assert first == f"MissingExtra {extra} {package} True"
    assert f"pip install 'dtxn[{extra}]'" in message


def test_a_broken_dependency_of_an_installed_extra_is_not_called_a_missing_extra() -> None:
    """nats is there but something it needs is not: show that error, not "install the extra"."""
    result = _run(("nats.aio",), (
        "try:\n"
        "    import dtxn.runtime.transport.nats\n"
        "except ModuleNotFoundError as e:\n"
        "    print(type(e).__name__, e.name)\n"
    ))
    assert result.stdout.strip() == "ModuleNotFoundError nats.aio", result.stderr


def test_dtxn_node_without_the_nats_extra_says_so_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('name = "a"\n')
    result = _run(("nats",), (
        "from dtxn.runtime.cli import main\n"
        f"sys.exit(main(['node', '--config', {str(config)!r}]))\n"
    ))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "pip install 'dtxn[nats]'" in result.stderr


def test_dtxn_version_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "dtxn.runtime.cli", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dtxn ")
