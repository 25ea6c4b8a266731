"""The public faces hold: every `__all__` name resolves, nothing outside the
code imports a private module, and the layers import only downward."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import dtxn.actors
import dtxn.bench
import dtxn.protocols
import dtxn.runtime
import dtxn.testing
import pytest

ROOT = Path(__file__).resolve().parents[2]


def all_modules() -> list[str]:
    names = []
    for package in (dtxn.actors, dtxn.protocols, dtxn.runtime, dtxn.testing, dtxn.bench):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            names.append(info.name)
    return names


MODULES = all_modules()


def test_the_walk_finds_every_layer_package() -> None:
    for name in ("dtxn.runtime.hosting", "dtxn.runtime.wal", "dtxn.runtime.transport",
                 "dtxn.runtime.resources", "dtxn.runtime.sim", "dtxn.runtime.sim.sagas",
                 "dtxn.runtime.cli", "dtxn.runtime.demo", "dtxn.protocols.saga"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", [])
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"


def _imports_in(source: str) -> list[str]:
    """Every module an import statement in `source` names (Python code or a doc's code blocks)."""
    found = []
    for match in re.finditer(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", source, re.M):
        found.append(match.group(1) or match.group(2))
    return found


def _outside_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "examples").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.md"))
    files += sorted((ROOT / "tests").rglob("*.py"))
    return files


def test_no_doc_example_or_test_imports_a_private_module() -> None:
    offenders = []
    for path in _outside_files():
        for module in _imports_in(path.read_text()):
            parts = module.split(".")
            if parts[0] == "dtxn" and any(p.startswith("_") for p in parts):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert not offenders, "import the package's public face instead:\n" + "\n".join(offenders)


def _dtxn_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dtxn"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dtxn")}
    return out


def _files(folder: str) -> list[Path]:
    return [p for p in sorted((ROOT / folder).rglob("*.py"))]


def test_protocols_import_nothing_of_dtxn_but_protocols() -> None:
    bad = [(p.name, m) for p in _files("protocols") for m in _dtxn_imports(p)
           if not m.startswith("dtxn.protocols")]
    assert not bad


def test_actors_know_no_transactions() -> None:
    bad = [(p.name, m) for p in _files("actors") for m in _dtxn_imports(p)
           if not (m.startswith("dtxn.actors") or m == "dtxn.protocols.errors")]
    assert not bad


TOOLS = ("dtxn.runtime.sim", "dtxn.runtime.demo", "dtxn.runtime.cli", "dtxn.testing", "dtxn.bench")
PRODUCTION = ("hosting", "wal", "transport", "resources", "choreography", "_runtime.py",
              "clock.py", "loop.py", "resource.py", "observe.py", "otel.py", "_stats.py",
              "servers.py", "__init__.py")


def test_no_production_module_imports_the_simulator_demo_cli_or_testing() -> None:
    bad = []
    for entry in PRODUCTION:
        base = ROOT / "runtime" / entry
        for path in [base] if base.is_file() else sorted(base.rglob("*.py")):
            for module in _dtxn_imports(path):
                if any(module == t or module.startswith(t + ".") for t in TOOLS):
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_wal_and_the_transport_do_not_reach_up_into_hosting_or_the_runtime() -> None:
    bad = []
    for folder in ("runtime/wal", "runtime/transport"):
        for path in _files(folder):
            for module in _dtxn_imports(path):
                if module.startswith(("dtxn.runtime.hosting", "dtxn.runtime._runtime",
                                      "dtxn.runtime.resources")) or module == "dtxn.runtime":
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_package_imports_without_its_optional_extras() -> None:
    """`import dtxn.runtime` and the CLI's module need only the core install."""
    probe = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('asyncpg', 'nats', 'nkeys', 'opentelemetry'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dtxn.runtime, dtxn.runtime.wal, dtxn.runtime.resources, dtxn.runtime.hosting\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
