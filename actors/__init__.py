"""dtxn.actors: a small actor core with bounded mailboxes and supervision.

It knows nothing of transactions: an `Actor` handles one message at a time,
an `ActorRef` sends to its bounded mailbox (`tell`, `tell_nowait`, `ask`),
and an `ActorSystem` hosts actors in one task group and supervises them.
"""

from dtxn.actors.actor import Actor
from dtxn.actors.errors import (
    ActorError,
    ActorFailed,
    ActorNameTaken,
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    Rejected,
    UnknownMessage,
)
from dtxn.actors.mailbox import MailboxStatistics
from dtxn.actors.ref import ActorRef
from dtxn.actors.supervision import Directive, SupervisionPolicy
from dtxn.actors.system import ActorSystem, ActorSystemStatistics, DeadLetter
from dtxn.actors.timing import Cancellable, Timekeeper

__all__ = [
    "Actor",
    "ActorError",
    "ActorFailed",
    "ActorNameTaken",
    "ActorNotFound",
    "ActorRef",
    "ActorStopped",
    "ActorSystem",
    "ActorSystemStatistics",
    "AskTimeout",
    "Cancellable",
    "DeadLetter",
    "Directive",
    "MailboxFull",
    "MailboxStatistics",
    "Rejected",
    "SupervisionPolicy",
    "Timekeeper",
    "UnknownMessage",
]
