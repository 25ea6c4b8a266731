"""`dtxn.protocols` stays pure: importing it pulls in no IO, clock, randomness or runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

BANNED = (
    "asyncio",
    "anyio",
    "time",
    "random",
    "aiosqlite",
    "socket",
    "threading",
    "dtxn.runtime",
    "dtxn.actors",
)

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    banned = json.loads(sys.argv[1])
    # The one third-party dependency comes first: msgspec imports datetime,
    # which imports time. Then forget every banned module already loaded (by
    # msgspec or by the interpreter at start-up), so that any import the
    # protocols themselves make shows up again.
    import msgspec  # noqa: F401
    for name in list(sys.modules):
        if any(name == b or name.startswith(b + ".") for b in banned):
            del sys.modules[name]

    import dtxn.protocols as package
    imported = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        imported.append(info.name)

    found = sorted(
        name for name in sys.modules
        if any(name == b or name.startswith(b + ".") for b in banned)
    )
    print(json.dumps({"imported": imported, "found": found}))
    """
)


def probe(banned: tuple[str, ...]) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(banned)],
        capture_output=True,
        text=True,
        check=True,
    )
    answer: dict[str, list[str]] = json.loads(result.stdout)
    return answer


def test_importing_every_protocol_module_imports_no_io_clock_randomness_or_runtime() -> None:
    answer = probe(BANNED)
    assert {"dtxn.protocols.twopc", "dtxn.protocols.threepc"} <= set(answer["imported"])
    assert answer["found"] == []


def test_the_purity_probe_notices_a_banned_import() -> None:
    # enum is imported by the protocols (and forgotten by the probe first):
    # banning it proves the probe would see a real import.
    answer = probe(("enum",))
    assert answer["found"] == ["enum"]
