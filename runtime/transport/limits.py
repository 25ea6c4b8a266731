"""What one message off the wire may cost a node: its bytes, its nesting, its log lines.

A node decodes bytes that any peer (or, through the gateway, any client) can
choose. Three bounds keep one hostile message, or a flood of them, from
costing more than a dropped message:

- size: at most `MAX_MESSAGE_BYTES` (1 MiB, NATS's own default `max_payload`)
  per message, checked before decoding;
- nesting: at most `MAX_NESTING` (64) levels of msgpack arrays and maps per
  message, the message's own levels included, checked before decoding by
  `nesting_exceeds`, a loop over the bytes that cannot itself recurse. msgspec
  decodes nested containers recursively and raises `RecursionError` near
  Python's recursion limit; a payload accepted just below that limit would
  then fail wherever it is encoded or decoded again deeper in the stack (the
  WAL, a re-sent PREPARE, recovery), so the bound sits far below it;
- log lines: `LogLimiter` lets a few lines per sender through and then one
  per interval, each saying how many it held back.

`Budget` is the token bucket under `LogLimiter`, also used by the runtime
for messages about transactions it does not hold (docs/nats.md). Both read
time from the runtime's clock (a `Timekeeper`), never the wall clock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec
from dtxn.actors.timing import Timekeeper
from dtxn.protocols.errors import CodecError, ConfigError

MAX_MESSAGE_BYTES = 1 << 20
MAX_NESTING = 64

# The bytes that can open a msgpack container (fixmap, fixarray, array16/32,
# map16/32). `bytes.translate` deleting all others (`_NOT_CONTAINER`) counts
# them in C: a message with no more of them than the limit needs no scan.
_CONTAINER = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_CONTAINER = bytes(b for b in range(256) if b not in _CONTAINER)

# Bytes after the type byte that a scalar occupies: (fixed length, length-prefix size).
# A length prefix of n bytes is followed by that many more bytes (str, bin, ext).
_SKIP: dict[int, tuple[int, int]] = {
    0xC0: (0, 0), 0xC2: (0, 0), 0xC3: (0, 0),  # nil, false, true
    0xC4: (0, 1), 0xC5: (0, 2), 0xC6: (0, 4),  # bin 8/16/32
    0xC7: (1, 1), 0xC8: (1, 2), 0xC9: (1, 4),  # ext 8/16/32 (type byte + data)
    0xCA: (4, 0), 0xCB: (8, 0),  # float 32/64
    0xCC: (1, 0), 0xCD: (2, 0), 0xCE: (4, 0), 0xCF: (8, 0),  # uint 8..64
    0xD0: (1, 0), 0xD1: (2, 0), 0xD2: (4, 0), 0xD3: (8, 0),  # int 8..64
    0xD4: (2, 0), 0xD5: (3, 0), 0xD6: (5, 0), 0xD7: (9, 0), 0xD8: (17, 0),  # fixext
    0xD9: (0, 1), 0xDA: (0, 2), 0xDB: (0, 4),  # str 8/16/32
}


def nesting_exceeds(data: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the msgpack `data` nests arrays and maps more than `limit` deep.

    Iterative and linear in `len(data)`. Malformed or truncated bytes answer
    False: the decoder then reports them.
    """
    if len(data.translate(None, _NOT_CONTAINER)) <= limit:
        return False  # not even `limit` bytes that could open a container
    # Items still to read in each open container, outermost first.
    remaining = [1]
    pos, end = 0, len(data)
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            continue
        remaining[-1] -= 1
        if pos >= end:
            return False
        byte = data[pos]
        pos += 1
        if byte < 0x80 or byte >= 0xE0:  # positive and negative fixint
            continue
        if byte < 0xA0:  # fixmap, fixarray
            count = (byte & 0x0F) * 2 if byte < 0x90 else byte & 0x0F
        elif byte < 0xC0:  # fixstr
            pos += byte & 0x1F
            continue
        elif byte >= 0xDC:  # array16/32, map16/32
            size = 2 if byte in (0xDC, 0xDE) else 4
            count = int.from_bytes(data[pos:pos + size], "big")
            pos += size
            if byte >= 0xDE:
                count *= 2
        else:
            skip = _SKIP.get(byte)
            if skip is None:
                return False  # 0xC1, never used: the decoder rejects it
            fixed, prefix = skip
            length = int.from_bytes(data[pos:pos + prefix], "big") if prefix else 0
            pos += prefix + fixed + length
            continue
        remaining.append(count)
        if len(remaining) - 1 > limit:
            return True
    return False


def wire_problem(
    data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES, max_nesting: int = MAX_NESTING
) -> str | None:
    """Why `data` must not be decoded (too large, nested too deep), or None."""
    if len(data) > max_bytes:
        return f"{len(data)} bytes, over the limit of {max_bytes}"
    if nesting_exceeds(data, max_nesting):
        return f"nested more than {max_nesting} levels deep"
    return None


def decode_bounded(
    decoder: msgspec.msgpack.Decoder[Any],
    data: bytes,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_nesting: int = MAX_NESTING,
) -> Any:
    """Decode `data` within the bounds; any failure is a `CodecError` (never a crash)."""
    problem = wire_problem(data, max_bytes=max_bytes, max_nesting=max_nesting)
    if problem is not None:
        raise CodecError(problem)
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        # RecursionError cannot happen within the nesting bound; it stays a
        # dropped message should a decoder ever recurse deeper than that.
        raise CodecError(str(exc)) from exc


def check_limits(max_bytes: int, max_nesting: int) -> None:
    for name, value in (("max_message_bytes", max_bytes), ("max_nesting", max_nesting)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


class Budget:
    """Token buckets by key: `burst` at once, refilled at `per_s` a second.

    At most `max_keys` buckets are kept; beyond that the least recently used
    is forgotten (its key starts again with a full bucket).
    """

    __slots__ = ("_buckets", "_clock", "burst", "max_keys", "per_s")

    def __init__(
        self, clock: Timekeeper, *, burst: float, per_s: float, max_keys: int = 1024
    ) -> None:
        if not burst >= 1 or not per_s > 0 or max_keys < 1:
            raise ConfigError(
                f"a budget needs burst >= 1, per_s > 0 and max_keys >= 1 "
                f"(got {burst!r}, {per_s!r}, {max_keys!r})"
            )
        self._clock = clock
        self.burst = float(burst)
        self.per_s = float(per_s)
        self.max_keys = max_keys
        # key -> [tokens, when last refilled]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def take(self, key: str) -> bool:
        """Spend one token of `key`'s bucket; False if it is empty."""
        now = self._clock.now()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = [self.burst, now]
        else:
            buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_s)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False


class LogLimiter:
    """Lets `burst` log lines per key through, then one per `interval_s`."""

    __slots__ = ("_budget", "_held")

    def __init__(
        self, clock: Timekeeper, *, burst: int = 5, interval_s: float = 10.0,
        max_keys: int = 1024,
    ) -> None:
        self._budget = Budget(clock, burst=burst, per_s=1.0 / interval_s, max_keys=max_keys)
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: hold this line back. Otherwise log it, with how many were held back."""
        if not self._budget.take(key):
            held = self._held
            if key in held or len(held) < self._budget.max_keys:
                held[key] = held.get(key, 0) + 1
            return None
        return self._held.pop(key, 0)


__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_NESTING",
    "Budget",
    "LogLimiter",
    "decode_bounded",
    "nesting_exceeds",
    "wire_problem",
]
