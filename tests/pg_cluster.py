"""Test helper: a private PostgreSQL 15 server in a temporary directory, on a loopback port.

initdb into a fresh directory, start with `pg_ctl` on 127.0.0.1 at a free port
(no Unix socket, so nothing collides with a system server), stop and delete it
when done, also on failure. As root, every binary runs as the `postgres` OS
user (the server refuses to run as root) and the directory is chowned to it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("DTXN_PG_BIN", "/usr/lib/postgresql/15/bin"))
DEBIAN_PACKAGE = "postgresql-15"


def require_binaries() -> None:
    """Skip the calling test when the PostgreSQL server binaries are not installed."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip(
            f"PostgreSQL 15 server binaries not found in {PG_BIN}: install the Debian "
            f"package {DEBIAN_PACKAGE} (or set DTXN_PG_BIN)"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    """A running private server; `dsn(db)` connects to one of its databases as `postgres`."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, *argv: str) -> None:
        cmd = [str(PG_BIN / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}"
            )

    def createdb(self, name: str) -> None:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def _options(self, max_prepared_transactions: int) -> str:
        return (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories=''"
            f" -c max_prepared_transactions={max_prepared_transactions} -c fsync=off"
        )

    def start(self, max_prepared_transactions: int = 64) -> None:
        opts = self._options(max_prepared_transactions)
        log = str(self.root / "server.log")
        self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", log, "-o", opts)

    def stop(self) -> None:
        self.run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))


@contextmanager
def pg_cluster(max_prepared_transactions: int = 64) -> Iterator[PgCluster]:
    """Start a private server; stop it and remove its directory on the way out."""
    require_binaries()
    # Not pytest's tmp_path: its parents are private to root, and postgres must enter.
    root = Path(tempfile.mkdtemp(prefix="dtxn-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        cluster = PgCluster(root, _free_port())
        cluster.run("initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust",
                    "--no-sync", "-E", "UTF8", "--locale=C")
        cluster.start(max_prepared_transactions)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
