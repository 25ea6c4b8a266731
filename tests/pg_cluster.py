"""Test helper: a private PostgreSQL 15 server per test module (see dtxn.runtime.servers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dtxn.runtime.servers import PostgresServer, postgres_server

PgCluster = PostgresServer


@contextmanager
def pg_cluster(max_prepared_transactions: int = 64) -> Iterator[PostgresServer]:
    """Start a private server (ServerUnavailable if not installed: .ci/run installs it)."""
    with postgres_server(max_prepared_transactions) as server:
        yield server
