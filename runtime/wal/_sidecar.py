"""Check a SQLite `-wal` sidecar's frames before SQLite opens it.

SQLite reads its WAL file frame by frame and stops, silently, at the first
frame whose salts or cumulative checksum do not match: every frame from a
damaged one on is dropped, committed or not. For dtxn's log that is a silent
loss of forced records (a coordinator's c-commit among them), after which
presumed abort would answer "abort" for a transaction that committed. So the
store scans the sidecar itself first (the format is documented at
https://www.sqlite.org/fileformat.html#the_write_ahead_log) and reports:

- a frame of the current generation (the header's salts) whose checksum
  fails, wherever it is: a bit flip, an overwritten region, or a torn write;
- a frame cut short at the end of the file (truncated mid-frame);
- a header that is not a WAL header, or whose own checksum fails.

Frames of an older generation after the current ones (SQLite reuses the file
after a checkpoint, with new salts) are the normal end of the log. After a
process crash (SIGKILL) a sidecar is never torn: the kernel has every
`write` whole. After a power loss a torn final frame of a transaction that
never committed (so was never acknowledged) looks the same as damage: the
scan cannot tell them apart, and reports both; what the store then does
costs liveness, never safety (docs/wal.md, "What the WAL files promise").
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import msgspec

__all__ = ["SidecarScan", "scan_sidecar", "sidecar_path"]

_MAGIC_LE = 0x377F0682  # checksums over little-endian words
_MAGIC_BE = 0x377F0683  # checksums over big-endian words
_HEADER = 32
_FRAME_HEADER = 24
_MASK = 0xFFFFFFFF


class SidecarScan(msgspec.Struct, frozen=True):
    """What a sidecar's frames say. `damage` is None when nothing is wrong."""

    path: str
    size: int
    frames: int  # valid frames of the current generation, in order from the first
    commits: int  # of which commit frames (the end of a SQLite transaction)
    damage: str | None = None


def sidecar_path(db_path: str | os.PathLike[str]) -> Path:
    """The `-wal` file SQLite keeps beside the database at `db_path`."""
    return Path(os.fspath(db_path) + "-wal")


def _checksum(data: bytes, big_endian: bool, s0: int, s1: int) -> tuple[int, int]:
    words = struct.unpack((">" if big_endian else "<") + f"{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


def scan_sidecar(db_path: str | os.PathLike[str]) -> SidecarScan | None:
    """Scan the `-wal` sidecar of the database at `db_path`; None if there is none.

    Reads the whole file (SQLite checkpoints it at about 4 MiB by default).
    """
    path = sidecar_path(db_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    where, size = str(path), len(data)
    if size == 0:
        return SidecarScan(where, 0, 0, 0)
    if size < _HEADER:
        return SidecarScan(where, size, 0, 0, f"the header is cut short ({size} of 32 bytes)")
    magic, _version, page_size, _ckpt, salt1, salt2, c0, c1 = struct.unpack(">8I", data[:_HEADER])
    if magic not in (_MAGIC_LE, _MAGIC_BE):
        return SidecarScan(where, size, 0, 0, f"the header's magic is {magic:#010x}, not a WAL's")
    big_endian = magic == _MAGIC_BE
    if (c0, c1) != _checksum(data[:24], big_endian, 0, 0):
        return SidecarScan(where, size, 0, 0, "the header's checksum does not match")
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return SidecarScan(where, size, 0, 0, f"the header names page size {page_size}")
    frame_size = _FRAME_HEADER + page_size
    s0, s1 = c0, c1
    frames = commits = 0
    offset = _HEADER
    while offset < size:
        if size - offset < frame_size:
            return SidecarScan(
                where, size, frames, commits,
                f"frame {frames + 1} at byte {offset} is cut short "
                f"({size - offset} of {frame_size} bytes): the file was truncated mid-frame",
            )
        head = data[offset : offset + _FRAME_HEADER]
        _page, commit_size, f_salt1, f_salt2, f0, f1 = struct.unpack(">6I", head)
        if (f_salt1, f_salt2) != (salt1, salt2):
            break  # a frame of an older generation: the normal end of the log
        n0, n1 = _checksum(head[:8], big_endian, s0, s1)
        n0, n1 = _checksum(data[offset + _FRAME_HEADER : offset + frame_size], big_endian, n0, n1)
        if (n0, n1) != (f0, f1):
            return SidecarScan(
                where, size, frames, commits,
                f"frame {frames + 1} at byte {offset} fails its checksum: SQLite would drop "
                f"it and the {(size - offset) // frame_size - 1} frame(s) after it",
            )
        s0, s1 = n0, n1
        frames += 1
        commits += commit_size != 0
        offset += frame_size
    return SidecarScan(where, size, frames, commits)
