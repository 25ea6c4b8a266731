"""`node.toml`: what one `dtxn node` process hosts, and how it reaches NATS.

    [node]
    name = "bank-a"
    wal = "bank-a.wal"             # relative paths are relative to this file
    durability = "full"            # full | normal | memory
    max_timeout_s = 60.0           # the longest timeout a transaction may ask for

    [nats]
    servers = ["nats://127.0.0.1:4222"]
    user = "bank-a"                # or token = "...", or nkeys_seed = "bank-a.nk"
    password = "..."
    tls_ca = "ca.pem"              # optional TLS: trust this CA (tls_cert/tls_key: client cert)

    [peers]                        # optional; without it any authenticated node may talk
    nodes = ["coord", "bank-b"]
    coordinators = ["coord"]       # only these may send PREPARE

    [timeouts]                     # optional; seconds, each at most max_timeout_s
    votes_s = 5.0

    [gateway]                      # optional: accept transactions from NATS clients
    enabled = true
    clients = ["teller-1"]         # only these nodes may submit (default: any node)

    [[resources]]
    name = "ledger"
    kind = "postgres"              # postgres | sqlite | python
    dsn = "postgresql://app@127.0.0.1/bank_a"
    branch = "bank:branch"         # module:function, found next to this file or on sys.path

Every mistake is a `ConfigError` naming the file, the table and the key.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Timeouts
from dtxn.runtime.caps import MAX_TIMEOUT_S, check_max_timeout, check_timeouts
from dtxn.runtime.wal import parse_durability

RESOURCE_KINDS = ("postgres", "sqlite", "python")


class NatsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    servers: list[str]
    prefix: str = "dtxn"
    token: str | None = None
    user: str | None = None
    password: str | None = None
    nkeys_seed: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class NodeSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    wal: str
    durability: str = "full"
    resource_concurrency: int = 64
    # No transaction this node coordinates (a gateway client's included) may
    # ask for a longer timeout; see `dtxn.runtime.caps`.
    max_timeout_s: float = MAX_TIMEOUT_S


class PeersSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nodes: list[str] | None = None
    coordinators: list[str] | None = None


class GatewaySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = False
    # The nodes whose requests the gateway runs; None: any authenticated node.
    clients: list[str] | None = None


class ResourceSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    kind: str
    dsn: str | None = None  # postgres
    path: str | None = None  # sqlite
    branch: str | None = None  # postgres, sqlite: "module:function"
    factory: str | None = None  # python: "module:function" returning a Resource
    resource_name: str | None = None  # gid / marker prefix; default "<name>@<node>"
    options: dict[str, Any] = {}


class NodeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node: NodeSection
    nats: NatsSection
    peers: PeersSection = PeersSection()
    timeouts: Timeouts = Timeouts()
    gateway: GatewaySection = GatewaySection()
    resources: list[ResourceSection] = []
    # Set by `load`: the directory relative paths and branch modules are found in.
    base: str = "."

    def path(self, relative: str) -> Path:
        return (Path(self.base) / relative).resolve()


def load(path: str | Path) -> NodeConfig:
    """Read and check a node configuration file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read node config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    # Timeouts is array_like on the wire; in a file it is a table of named keys.
    timeouts = raw.pop("timeouts", None)
    try:
        config = msgspec.convert(raw, NodeConfig, strict=True)
        if timeouts is not None:
            if not isinstance(timeouts, dict):
                raise ConfigError(f"{path}: [timeouts] must be a table")
            merged = {**msgspec.structs.asdict(Timeouts()), **timeouts}
            unknown = set(timeouts) - set(Timeouts.__struct_fields__)
            if unknown:
                raise ConfigError(f"{path}: [timeouts] has unknown keys {sorted(unknown)}")
            values = [merged[name] for name in Timeouts.__struct_fields__]
            config = msgspec.structs.replace(config, timeouts=msgspec.convert(values, Timeouts))
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    config = msgspec.structs.replace(config, base=str(path.parent.resolve()))
    check(config, str(path))
    return config


def check(config: NodeConfig, where: str) -> None:
    """The checks a schema cannot express; raises ConfigError naming `where`."""
    try:
        parse_durability(config.node.durability)
    except ConfigError as exc:
        raise ConfigError(f"{where}: [node] durability: {exc}") from None
    if not config.nats.servers:
        raise ConfigError(f"{where}: [nats] servers must list at least one URL")
    cap = check_max_timeout(config.node.max_timeout_s, f"{where}: [node] max_timeout_s")
    try:
        check_timeouts(config.timeouts, cap, "[timeouts]")
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    seen: set[str] = set()
    for index, resource in enumerate(config.resources):
        label = f"{where}: [[resources]] #{index + 1} ({resource.name!r})"
        if resource.name in seen:
            raise ConfigError(f"{label}: the name is used twice")
        seen.add(resource.name)
        if resource.kind not in RESOURCE_KINDS:
            raise ConfigError(f"{label}: kind must be one of {', '.join(RESOURCE_KINDS)}")
        needed = {"postgres": ("dsn", "branch"), "sqlite": ("path", "branch"),
                  "python": ("factory",)}[resource.kind]
        for key in needed:
            if getattr(resource, key) is None:
                raise ConfigError(f"{label}: kind {resource.kind!r} needs {key} = ...")


def import_object(spec: str, base: str, what: str) -> Any:
    """`module:attribute`, looking for the module next to the config file first."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{what} {spec!r} must be written 'module:function'")
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: module {module_name!r} has no {attribute!r}") from None


__all__ = ["RESOURCE_KINDS", "NodeConfig", "import_object", "load"]
