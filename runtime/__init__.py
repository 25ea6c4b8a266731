"""dtxn.runtime: hosts actors, interprets protocol effects, owns clock, transports and WAL."""

from dtxn.runtime.clock import Clock
from dtxn.runtime.loop import run
from dtxn.runtime.runtime import Runtime, RuntimeStatistics
from dtxn.runtime.transport import Address, InProcessTransport, Transport, UnknownNode

__all__ = [
    "Address",
    "Clock",
    "InProcessTransport",
    "Runtime",
    "RuntimeStatistics",
    "Transport",
    "UnknownNode",
    "run",
]
