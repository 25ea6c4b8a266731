"""A user's `mypy --strict` finds dtxn after `pip install .` and `pip install -e .` (issue 19).

Each case installs a copy of this checkout into a fresh virtual environment
(with its dependencies, as a user has them: a `msgspec.Struct` base unknown to
mypy would make every outcome type `Any`) and type-checks a small
app against it twice: as written, which must pass, and with a type error,
which must be reported (so a pass means mypy saw dtxn's types, not `Any`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

APP = '''
from dtxn.protocols.messages import Vote
from dtxn.runtime import Runtime, TxnOutcome


class Ledger:
    async def prepare(self, txid: str, amount: int) -> Vote:
        return Vote.YES

    async def commit(self, txid: str) -> None: ...

    async def abort(self, txid: str) -> None: ...


async def main() -> TxnOutcome:
    async with Runtime("n", resources={"a": Ledger()}) as rt:
        return await rt.transact({"a@n": 1})
'''

WRONG = APP + '''

async def wrong(rt: Runtime) -> int:
    return await rt.transact({"a@n": 1})
'''


def _copy_checkout(to: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


def _mypy(python: Path, app: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--python-executable", str(python), "--strict",
         "--no-incremental", str(app)],
        capture_output=True, text=True, timeout=300, cwd=app.parent,
    )


@pytest.mark.parametrize("editable", [False, True], ids=["pip install .", "pip install -e ."])
def test_mypy_strict_finds_dtxn_in_a_users_app(tmp_path: Path, editable: bool) -> None:
    source = tmp_path / "dtxn"
    _copy_checkout(source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
               *(["-e"] if editable else []), str(source)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    app = tmp_path / "app" / "app.py"
    app.parent.mkdir()
    app.write_text(APP)
    result = _mypy(python, app)
    assert result.returncode == 0, result.stdout + result.stderr
    app.write_text(WRONG)
    result = _mypy(python, app)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Incompatible return value type (got "TxnOutcome", expected "int")' in result.stdout
