"""dtxn.runtime.transport: how runtimes reach each other.

`Transport` is the port; `Address` names an actor on a node. Two
implementations: `InProcessTransport` (runtimes in one process; messages are
passed as objects, never encoded) and `dtxn.runtime.transport.nats.NatsTransport`
(runtimes in several processes or hosts; needs the `dtxn[nats]` extra, so it is
imported from its own module).
"""

from dtxn.runtime.transport._inprocess import (
    Address,
    InProcessTransport,
    NodePort,
    RemoteError,
    Transport,
    TransportStatistics,
    UnknownNode,
)

__all__ = [
    "Address",
    "InProcessTransport",
    "NodePort",
    "RemoteError",
    "Transport",
    "TransportStatistics",
    "UnknownNode",
]
