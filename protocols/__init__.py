"""dtxn.protocols: pure, sans-IO state machines for atomic commit and sagas.

Nothing in this package performs IO, reads a clock, draws random numbers or
imports asyncio; a machine takes an event and returns a list of effects for
the runtime to carry out. See `dtxn.protocols.twopc` and `dtxn.protocols.threepc`.
"""

from dtxn.protocols.errors import (
    CodecError,
    ConfigError,
    DtxnError,
    LogCorruptError,
    ProtocolError,
    TransactionError,
)

__all__ = [
    "CodecError",
    "ConfigError",
    "DtxnError",
    "LogCorruptError",
    "ProtocolError",
    "TransactionError",
]
