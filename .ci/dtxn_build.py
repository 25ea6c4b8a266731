"""dtxn's build backend: setuptools', with strict editable installs by default.

The source folders (`actors/`, `runtime/`, `protocols/`, ...) install as
`dtxn.*` through `[tool.setuptools.package-dir]`. For such a mapping,
setuptools' default editable install adds an import-hook finder, which
Python follows and type checkers do not: `mypy --strict` on a user's app
then cannot find `dtxn` after `pip install -e .`. Strict editable mode lays
out a real `dtxn/` tree of links instead, which both follow; this backend
makes it the default (an explicit `--config-settings editable_mode=...`
still wins). The cost of strict mode: a module added to dtxn needs a
reinstall before it is importable.
"""

from __future__ import annotations

from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - the rest of the PEP 517/660 hooks
    build_sdist,
    build_wheel,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    settings = dict(config_settings or {})
    settings.setdefault("editable_mode", "strict")
    return _setuptools.build_editable(wheel_directory, settings, metadata_directory)
