"""The one exception hierarchy of dtxn, rooted in `DtxnError`.

It lives in `dtxn.protocols` because that package is the bottom layer: pure,
with no dependencies, so the actor core and the runtime can both import it
without pulling IO into the protocol machines.
"""

from __future__ import annotations


class DtxnError(Exception):
    """Raised for every error dtxn itself reports; catch this to catch them all."""


class ConfigError(DtxnError):
    """Raised when a configuration value is missing, of the wrong type or out of range."""


class ProtocolError(DtxnError):
    """Raised when a state machine is handed an event that is illegal in its state.

    The machine's state is left exactly as it was before the event.
    """


class CodecError(DtxnError):
    """Raised when bytes cannot be decoded into a known message or log record."""


class LogCorruptError(DtxnError):
    """Raised when a write-ahead log record fails its checksum or cannot be decoded."""


class TransactionError(DtxnError):
    """Raised for a misuse of the transaction API (unknown id, bad participants, ...)."""
