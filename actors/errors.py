"""Errors raised by the actor core; all derive from `dtxn.protocols.errors.DtxnError`."""

from __future__ import annotations

from dtxn.protocols.errors import DtxnError


class ActorError(DtxnError):
    """Raised for a failure of the actor machinery itself (not of a handler)."""


class MailboxFull(ActorError):
    """Raised by `tell_nowait` when the receiving actor's bounded mailbox has no room."""


class ActorStopped(ActorError):
    """Raised to an asker whose actor stopped before (or while) handling the message."""


class AskTimeout(ActorError, TimeoutError):
    """Raised by `ask` when no reply arrived within `timeout_s`."""


class ActorNotFound(ActorError):
    """Raised when a name does not refer to a running actor."""


class ActorNameTaken(ActorError):
    """Raised by `spawn` when the name is already used by a running actor."""


class Rejected(DtxnError):
    """Raised by a handler to refuse one message while its state stays valid.

    The error goes back to the asker (or, for a tell, to the rejection report);
    the actor is *not* restarted. Any other exception from a handler is a failure
    handled by the supervisor.
    """


class UnknownMessage(Rejected):
    """Raised when an actor receives a message of a type it does not accept."""


class ActorFailed(ActorError):
    """Raised (escalated) when an actor failed and its policy could not absorb it."""
