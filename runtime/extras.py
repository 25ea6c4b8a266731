"""The optional parts of dtxn and the error that names the one missing.

The core install is anyio, msgspec, aiosqlite, uvloop and hypothesis. Each
real part is an extra (`pip install 'dtxn[nats]'`, `dtxn[postgres]`, ...);
a module that needs one imports it through `require`, so a user who lacks it
gets `MissingExtra` naming the extra to install, not a bare
ModuleNotFoundError from deep inside dtxn.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dtxn.protocols.errors import ConfigError


class MissingExtra(ConfigError, ImportError):
    """A dtxn feature needs a package its extra brings, and it is not installed."""

    def __init__(self, feature: str, extra: str, package: str) -> None:
        super().__init__(
            f"{feature} needs the {package!r} package, which is not installed:"
            f" pip install 'dtxn[{extra}]'"
        )
        self.extra = extra
        self.package = package


def missing(error: ModuleNotFoundError, *, package: str, extra: str, feature: str) -> Exception:
    """What to raise for `error`, met importing `package`: `MissingExtra` naming `extra`
    when `package` itself is absent; `error` as it is when something else is missing
    (a broken install should show itself, not pass for a missing extra).

        try:
            import nats
        except ModuleNotFoundError as error:
            raise missing(error, package="nats", extra="nats", feature="NatsTransport") from None
    """
    if error.name == package:
        return MissingExtra(feature, extra, package)
    return error


def require(package: str, *, extra: str, feature: str) -> ModuleType:
    """Import `package`, or raise `MissingExtra` naming `extra`."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as error:
        raise missing(error, package=package, extra=extra, feature=feature) from None


__all__ = ["MissingExtra", "missing", "require"]
