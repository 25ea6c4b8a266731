"""What a caller may ask of a node: the timeout cap and the checks of `Timeouts`.

Shared by `Runtime` (its own timeouts and every `transact`) and `node.toml`
(`[node] max_timeout_s`, `[timeouts]`), so both refuse the same values.
"""

from __future__ import annotations

from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Timeouts

# The longest timeout a transaction may ask for, unless a node says otherwise
# (`Runtime(max_timeout_s=...)`, `[node] max_timeout_s`): a client's
# `votes_s=1e300` would otherwise hold a row's lock for ever.
MAX_TIMEOUT_S = 60.0


def check_max_timeout(value: object, where: str) -> float:
    """`value` as a cap: a finite number of seconds > 0, else `ConfigError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < float("inf")  # False for nan too
    ):
        raise ConfigError(f"{where} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_timeouts(timeouts: object, cap: float, where: str) -> None:
    """Every field a finite number of seconds in (0, cap]: `TypeError` for a wrong
    type, `ConfigError` for a value out of range."""
    if not isinstance(timeouts, Timeouts):
        raise TypeError(
            f"{where} must be a dtxn.protocols.messages.Timeouts, "
            f"got {type(timeouts).__name__} {timeouts!r}"
        )
    for field in Timeouts.__struct_fields__:
        value = getattr(timeouts, field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{where}.{field} must be a number of seconds, got {value!r}")
        if not 0 < value <= cap:  # False for nan too
            raise ConfigError(
                f"{where}.{field} must be a positive number of seconds, finite and at "
                f"most this node's max_timeout_s ({cap!r} s); got {value!r}"
            )


__all__ = ["MAX_TIMEOUT_S", "check_max_timeout", "check_timeouts"]
