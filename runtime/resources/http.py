"""`HttpResource`: a 2PC/3PC participant whose branch lives behind an HTTP service.

The wire contract is docs/http.md: `POST {url}/prepare|commit|abort` with a
JSON body `{"txid", "branch", "op", "payload"}` and the header
`Idempotency-Key: {txid}:{branch}:{op}`; a 2xx whose JSON body says
`{"result": "ok"}` is success, `409` or `{"result": "failure"}` a business
refusal, anything else an error. This module is the client side; the service
side is `dtxn.runtime.http_service`.

Every attempt has one deadline for the whole exchange (connect, send, headers
and body: httpx's own timeouts are per socket operation, so a body that
trickles would outlast them), and reads at most `body_bytes_max` of the body.
5xx, timeouts and connection errors are retried with capped exponential
backoff and jitter; the jitter comes from an injectable RNG and the waits
from an injectable `sleep` (by default the runtime's `Clock`), so nothing
here reads time or draws randomness itself.

HttpResource keeps no durable state: a prepared branch is the service's to
keep, and after a crash the participant's log re-drives commit or abort.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

import anyio
import msgspec
from dtxn.protocols.errors import ConfigError, DtxnError
from dtxn.protocols.messages import Vote
from dtxn.runtime.clock import Clock

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "dtxn.runtime.resources.http needs httpx: pip install 'dtxn[http]'"
    ) from exc

log = logging.getLogger("dtxn.runtime.resources.http")

OPS = ("prepare", "precommit", "commit", "abort")
"""The endpoints of the contract; `precommit` is reserved for 3PC and not called yet."""
BODY_BYTES_MAX = 64 * 1024
"""The default cap on a response body: more is a contract error, never memory growth."""
_EXCERPT_CHARS = 300
_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class Rng(Protocol):
    """What the backoff draws jitter from (a seeded `random.Random` fits)."""

    def random(self) -> float: ...


Sleep = Callable[[float], Awaitable[None]]


class HttpServiceError(DtxnError):
    """Raised when an HTTP service cannot be reached or answers outside the contract."""


class HttpUnavailable(HttpServiceError):
    """Raised when every attempt failed with a 5xx, a timeout or a connection error."""


class HttpContractError(HttpServiceError):
    """Raised when a service answers something the contract does not allow (not retried)."""


class HttpRefused(HttpServiceError):
    """Raised by prepare when the service refused the branch (409 or result "failure")."""


class HttpPayloadError(HttpServiceError):
    """Raised when a payload cannot be encoded as JSON; nothing was sent."""


class _Retryable(Exception):
    """An attempt failed in a way worth another attempt; carries what the service said."""


def excerpt(data: bytes) -> str:
    """A short printable view of a response body, for error messages."""
    text = data[:_EXCERPT_CHARS].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(data) > _EXCERPT_CHARS else "")


class HttpResource:
    """A `Resource` that forwards prepare, commit and abort to the service at `url`.

    `client` is an `httpx.AsyncClient` you own and close; without one, the
    resource makes one (pooled, keep-alive) and closes it on `aclose()` or at
    the end of `async with`. Redirects are never followed.

    prepare makes at most `prepare_attempts_max` attempts; when they all fail
    (or the service breaks the contract) it sends abort, so that a branch the
    service did prepare does not stay prepared, and raises: the runtime counts
    that as a NO vote. commit and abort make up to `apply_attempts_max`
    attempts per call and then raise; the runtime calls them again with its
    own backoff until they land, because a decision is final.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = 5.0,
        prepare_attempts_max: int = 3,
        apply_attempts_max: int = 5,
        backoff_s_min: float = 0.05,
        backoff_s_max: float = 2.0,
        body_bytes_max: int = BODY_BYTES_MAX,
        sleep: Sleep | None = None,
        rng: Rng | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"HttpResource name {name!r} must be 1-64 of letters, digits and _ . @ -"
                " (it is the branch name in every request)"
            )
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"HttpResource {name!r}: url must be http(s)://..., got {url!r}")
        for label, value in (("timeout_s", timeout_s), ("backoff_s_min", backoff_s_min),
                             ("backoff_s_max", backoff_s_max)):
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"HttpResource {name!r}: {label} must be > 0, got {value!r}")
        for label, count in (("prepare_attempts_max", prepare_attempts_max),
                             ("apply_attempts_max", apply_attempts_max),
                             ("body_bytes_max", body_bytes_max)):
            if not isinstance(count, int) or count < 1:
                raise ConfigError(f"HttpResource {name!r}: {label} must be >= 1, got {count!r}")
        self.name = name
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.prepare_attempts_max = prepare_attempts_max
        self.apply_attempts_max = apply_attempts_max
        self.backoff_s_min = float(backoff_s_min)
        self.backoff_s_max = float(backoff_s_max)
        self.body_bytes_max = body_bytes_max
        # The edge: without an injected sleep or RNG, the runtime's Clock is the
        # one place that sleeps and owns a seeded random stream.
        clock = clock if clock is not None else Clock()
        self._sleep: Sleep = sleep if sleep is not None else clock.sleep
        self._rng: Rng = rng if rng is not None else clock.rng(f"http:{name}")
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
            follow_redirects=False,
        )
        self.attempts = 0  # requests sent, retries included
        self.retries = 0

    async def aclose(self) -> None:
        """Close the client if this resource made it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpResource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the Resource contract -------------------------------------------------------

    async def prepare(self, txid: str, payload: Any) -> Vote:
        body = self._encode(txid, "prepare", payload)  # before anything is sent
        try:
            answer = await self._call(txid, "prepare", body, self.prepare_attempts_max)
        except HttpRefused:
            raise  # the service holds nothing: a NO vote, nothing to undo
        except HttpServiceError as exc:
            # The service may have prepared and we did not hear it: undo before voting NO.
            await self._abort_after_failed_prepare(txid, exc)
            raise
        vote = answer.get("vote", "yes")
        if vote == "yes":
            return Vote.YES
        if vote == "read_only":
            return Vote.READ_ONLY
        error = self._contract(txid, "prepare", f"answered ok with an unknown vote {vote!r}")
        await self._abort_after_failed_prepare(txid, error)
        raise error

    async def commit(self, txid: str) -> None:
        await self._call(txid, "commit", self._encode(txid, "commit", None),
                         self.apply_attempts_max)

    async def abort(self, txid: str) -> None:
        await self._call(txid, "abort", self._encode(txid, "abort", None),
                         self.apply_attempts_max)

    # -- internals -----------------------------------------------------------------

    def _where(self, txid: str, op: str) -> str:
        return f"service {self.name!r} ({self.url}/{op}) txid={txid}"

    def _contract(self, txid: str, op: str, what: str) -> HttpContractError:
        return HttpContractError(f"{self._where(txid, op)}: {what}")

    def _encode(self, txid: str, op: str, payload: Any) -> bytes:
        try:
            return msgspec.json.encode(
                {"txid": txid, "branch": self.name, "op": op, "payload": payload}
            )
        except (TypeError, msgspec.EncodeError, OverflowError) as exc:
            raise HttpPayloadError(
                f"{self._where(txid, op)}: the payload is not JSON-encodable ({exc}); nothing sent"
            ) from exc

    async def _abort_after_failed_prepare(self, txid: str, cause: BaseException) -> None:
        try:
            await self.abort(txid)
        except HttpServiceError as exc:
            raise HttpUnavailable(
                f"{self._where(txid, 'prepare')}: prepare failed ({cause}) and the abort that"
                f" follows it did not land either ({exc}); the service may hold a prepared"
                " branch until an abort for this txid reaches it"
            ) from exc

    async def _call(self, txid: str, op: str, body: bytes, attempts_max: int) -> dict[str, Any]:
        last = ""
        for attempt in range(attempts_max):
            if attempt:
                self.retries += 1
                await self._sleep(self._backoff_s(attempt))
            try:
                return await self._attempt(txid, op, body)
            except _Retryable as exc:
                last = str(exc)
                log.warning("%s: attempt %d/%d failed: %s", self._where(txid, op),
                            attempt + 1, attempts_max, last)
        raise HttpUnavailable(
            f"{self._where(txid, op)}: {attempts_max} attempt(s) failed; last: {last}"
        )

    def _backoff_s(self, attempt: int) -> float:
        capped = min(self.backoff_s_max, self.backoff_s_min * 2.0 ** (attempt - 1))
        return capped * (0.5 + 0.5 * self._rng.random())  # jitter in [cap/2, cap)

    async def _attempt(self, txid: str, op: str, body: bytes) -> dict[str, Any]:
        self.attempts += 1
        headers = {
            "content-type": "application/json",
            "idempotency-key": f"{txid}:{self.name}:{op}",
            "accept-encoding": "identity",  # the cap counts bytes as they come off the wire
        }
        try:
            with anyio.fail_after(self.timeout_s):
                status, data = await self._exchange(f"{self.url}/{op}", body, headers, txid, op)
        except TimeoutError as exc:
            raise _Retryable(f"no complete answer within {self.timeout_s}s") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        return self._judge(txid, op, status, data)

    async def _exchange(
        self, url: str, body: bytes, headers: dict[str, str], txid: str, op: str
    ) -> tuple[int, bytes]:
        request = self._client.build_request("POST", url, content=body, headers=headers)
        response = await self._client.send(request, stream=True, follow_redirects=False)
        try:
            encoding = response.headers.get("content-encoding", "identity").lower()
            if encoding != "identity":
                raise self._contract(txid, op, f"answered {response.status_code} with"
                                     f" content-encoding {encoding!r}; only identity is allowed")
            declared = response.headers.get("content-length")
            cap = self.body_bytes_max
            if declared is not None and declared.isdigit() and int(declared) > cap:
                raise self._contract(txid, op, f"answered {response.status_code} with a"
                                     f" {declared}-byte body, over the {cap}-byte cap")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.body_bytes_max:
                    raise self._contract(txid, op, f"answered {response.status_code} with a body"
                                         f" over the {self.body_bytes_max}-byte cap")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
        finally:
            await response.aclose()

    def _judge(self, txid: str, op: str, status: int, data: bytes) -> dict[str, Any]:
        said = f"{status} {excerpt(data)}"
        if status >= 500:
            raise _Retryable(f"answered {said}")
        if status == 409:
            return self._refused(txid, op, said)
        if 300 <= status < 400:
            raise self._contract(txid, op, f"answered a redirect ({said}); redirects are not"
                                 " followed: point the resource at the final url")
        if not 200 <= status < 300:
            raise self._contract(txid, op, f"answered {said}")
        try:
            answer = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise self._contract(txid, op, f"answered {said}, which is not JSON") from None
        if not isinstance(answer, dict) or "result" not in answer:
            raise self._contract(txid, op, f"answered {said}, with no \"result\" field")
        result = answer["result"]
        if result == "ok":
            return answer
        if result == "failure":
            return self._refused(txid, op, said)
        raise self._contract(txid, op, f"answered {said}: result must be \"ok\" or \"failure\"")

    def _refused(self, txid: str, op: str, said: str) -> dict[str, Any]:
        if op == "prepare":
            raise HttpRefused(f"{self._where(txid, op)}: refused the branch: {said}")
        # A decision cannot be refused: this is the service breaking the contract.
        raise self._contract(txid, op, f"refused a decision ({said}); {op} must succeed")


__all__ = [
    "BODY_BYTES_MAX",
    "OPS",
    "HttpContractError",
    "HttpPayloadError",
    "HttpRefused",
    "HttpResource",
    "HttpServiceError",
    "HttpUnavailable",
    "Rng",
    "Sleep",
    "excerpt",
]
