"""Private PostgreSQL and NATS servers for tests, benchmarks and examples.

Both start for real, from the Debian packages' binaries, in a temporary
directory, listening only on 127.0.0.1 at a free port; both are stopped and
their directory removed on the way out, also on failure. Nothing is mocked.

    with postgres_server() as pg:          # initdb + pg_ctl start
        pg.createdb("bank_a")
        dsn = pg.dsn("bank_a")

    async with nats_server(token="s3cret") as nats:   # nats-server -c <conf>
        url = nats.url

A missing binary raises `ServerUnavailable`, naming the Debian package to
install (`postgresql-15`, `nats-server`); `.ci/run` installs both.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from dtxn.protocols.errors import DtxnError
from dtxn.runtime.clock import Clock

PG_BIN = Path(os.environ.get("DTXN_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_PACKAGE = "postgresql-15"
NATS_BIN = os.environ.get("DTXN_NATS_SERVER", "nats-server")
NATS_PACKAGE = "nats-server"


class ServerUnavailable(DtxnError):
    """The server binaries are not installed (the message names the package)."""


class ServerFailed(DtxnError):
    """A server did not start or stop; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- PostgreSQL --------------------------------------------------------------------


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


class PostgresServer:
    """A private server; `dsn(db)` connects to one of its databases as `postgres`."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, *argv: str) -> None:
        cmd = [str(PG_BIN / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            # The server refuses to run as root: run every binary as `postgres`.
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ServerFailed(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}"
            )

    def createdb(self, name: str) -> None:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def start(self, max_prepared_transactions: int = 64, *, fsync: bool = False) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories=''"
            f" -c max_prepared_transactions={max_prepared_transactions}"
            f" -c max_connections=200 -c fsync={'on' if fsync else 'off'}"
        )
        log = str(self.root / "server.log")
        self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", log, "-o", opts)

    def stop(self) -> None:
        self.run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))


@contextmanager
def postgres_server(
    max_prepared_transactions: int = 64, *, fsync: bool = False
) -> Iterator[PostgresServer]:
    """Start a private PostgreSQL 15 server; stop it and remove its directory on the way out.

    `fsync=False` (tests) skips the server's own fsyncs; benchmarks pass True.
    """
    if not postgres_available():
        raise ServerUnavailable(
            f"PostgreSQL 15 server binaries not found in {PG_BIN}: install the Debian "
            f"package {PG_PACKAGE} (or set DTXN_PG_BIN)"
        )
    # Not a directory under pytest's tmp_path: its parents are private to root,
    # and the postgres user must be able to enter.
    root = Path(tempfile.mkdtemp(prefix="dtxn-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        server = PostgresServer(root, free_port())
        server.run("initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust",
                   "--no-sync", "-E", "UTF8", "--locale=C")
        server.start(max_prepared_transactions, fsync=fsync)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- NATS --------------------------------------------------------------------------


def nats_available() -> bool:
    return shutil.which(NATS_BIN) is not None


class NatsServer:
    """A running private nats-server: `url` to connect, `restart()` for outage tests."""

    def __init__(self, root: Path, port: int, config: str, *, tls: bool) -> None:
        self.root = root
        self.port = port
        self.config_path = root / "nats.conf"
        self.config_path.write_text(config)
        self.log_path = root / "nats.log"
        self.scheme = "tls" if tls else "nats"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self, *, within_s: float = 20.0) -> None:
        with self.log_path.open("ab") as log:
            # Popen returns at once (fork/exec); the wait below is async.
            self._process = subprocess.Popen(  # noqa: ASYNC220
                [NATS_BIN, "-c", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        clock = Clock()
        deadline = clock.now() + within_s
        while not _accepts(self.port):
            if self._process.poll() is not None or clock.now() > deadline:
                self.kill()
                raise ServerFailed(
                    f"nats-server did not start on port {self.port}:\n{self._log_tail()}"
                )
            await clock.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (an outage); `start()` brings it back on the same port."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=30)
        self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=30)
        self._process = None

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nats_config(
    port: int,
    *,
    token: str | None = None,
    users: Sequence[Mapping[str, object]] = (),
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_ca: Path | None = None,
) -> str:
    """A nats-server configuration: loopback only, optional auth and TLS.

    `users` entries are `{"user": .., "password": ..}` or `{"nkey": "U..."}`,
    each with optional `"publish"`/`"subscribe"` lists of allowed subjects
    (NATS permissions; see docs/nats.md for the per-node scheme).
    """
    lines = [f"listen: 127.0.0.1:{port}", "max_payload: 8MB"]
    if token is not None and users:
        raise ValueError("give a token or users, not both")
    if token is not None:
        lines.append(f"authorization {{ token: {_quote(token)} }}")
    if users:
        entries = []
        for user in users:
            fields = []
            for key in ("user", "password", "nkey"):
                if key in user:
                    fields.append(f"{key}: {_quote(str(user[key]))}")
            perms = []
            for key in ("publish", "subscribe"):
                if key in user:
                    subjects = ", ".join(_quote(str(s)) for s in user[key])  # type: ignore[attr-defined]
                    perms.append(f"{key}: {{ allow: [{subjects}] }}")
            if perms:
                fields.append("permissions: { " + ", ".join(perms) + " }")
            entries.append("{ " + ", ".join(fields) + " }")
        lines.append("authorization { users: [ " + ", ".join(entries) + " ] }")
    if tls_cert is not None:
        tls = [f"cert_file: {_quote(str(tls_cert))}", f"key_file: {_quote(str(tls_key))}"]
        if tls_ca is not None:
            tls.append(f"ca_file: {_quote(str(tls_ca))}")
        lines.append("tls { " + ", ".join(tls) + " }")
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def nats_server(
    *,
    token: str | None = None,
    users: Sequence[Mapping[str, object]] = (),
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_ca: Path | None = None,
) -> AsyncIterator[NatsServer]:
    """Start a private nats-server on a loopback port; kill it on the way out."""
    if not nats_available():
        raise ServerUnavailable(
            f"{NATS_BIN} not found: install the Debian package {NATS_PACKAGE} "
            "(or set DTXN_NATS_SERVER)"
        )
    root = Path(tempfile.mkdtemp(prefix="dtxn-nats-"))
    port = free_port()
    config = nats_config(
        port, token=token, users=users, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca
    )
    server = NatsServer(root, port, config, tls=tls_cert is not None)
    try:
        await server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


__all__ = [
    "NatsServer",
    "PostgresServer",
    "ServerFailed",
    "ServerUnavailable",
    "free_port",
    "nats_available",
    "nats_config",
    "nats_server",
    "postgres_available",
    "postgres_server",
]
