"""HttpResource against real services that misbehave on purpose.

Each misbehaving endpoint sits in front of the real stock service, so when
the service did prepare behind a broken answer, the test sees whether the
abort that HttpResource sends after a failed prepare really undid it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dtxn.protocols.messages import Vote
from dtxn.runtime.resources.http import (
    HttpContractError,
    HttpPayloadError,
    HttpRefused,
    HttpResource,
    HttpServiceError,
    HttpUnavailable,
)
from http_servers import (
    Misbehave,
    amount,
    anyio_backend,  # noqa: F401 - the fixture: asyncio only
    free_port,
    ledger_states,
    prepared_markers,
    served,
    service_app,
)
from nodes import eventually

pytestmark = pytest.mark.anyio

WIDGET = {"qty": 1}


def fast(url: str) -> HttpResource:
    return HttpResource(url, name="stock", timeout_s=0.5, backoff_s_min=0.01, backoff_s_max=0.05)


@pytest.mark.parametrize(
    ("mode", "error", "said"),
    [
        ("garbage", HttpContractError, "'<html>all good!</html>', which is not JSON"),
        ("error_result", HttpContractError, 'result must be "ok" or "failure"'),
        ("status_404", HttpContractError, "answered 404 'no route for this path here'"),
        ("redirect", HttpContractError, "answered a redirect (307"),
        ("huge", HttpContractError, "a body over the 65536-byte cap"),
        ("cut", HttpUnavailable, "RemoteProtocolError"),
    ],
)
async def test_a_broken_prepare_answer_is_an_error_naming_the_service_and_the_branch_is_aborted(
    tmp_path: Path, mode: str, error: type[HttpServiceError], said: str
) -> None:
    stock = Misbehave(service_app("stock", tmp_path), "prepare", mode)
    async with served(stock) as (url,), fast(url) as resource:
        with pytest.raises(error) as raised:
            await resource.prepare("t1", WIDGET)
        message = str(raised.value)
        assert f"service 'stock' ({url}/prepare) txid=t1" in message
        assert said in message, message
        # Whether or not the service prepared behind the answer, it ends aborted.
        assert ledger_states("stock", tmp_path) == {"t1": "aborted"}
    assert stock.seen >= 1
    assert amount("stock", tmp_path) == 10
    assert prepared_markers("stock", tmp_path) == 0


async def test_a_contract_error_is_not_retried_but_a_dropped_connection_is(tmp_path: Path) -> None:
    for mode, attempts in (("status_404", 1), ("cut", 3)):
        (tmp_path / mode).mkdir()
        stock = Misbehave(service_app("stock", tmp_path / mode), "prepare", mode)
        async with served(stock) as (url,), fast(url) as resource:
            with pytest.raises(HttpServiceError):
                await resource.prepare("t1", WIDGET)
        assert stock.seen == attempts, mode


async def test_a_prepare_slower_than_the_timeout_gives_up_and_its_branch_ends_aborted(
    tmp_path: Path,
) -> None:
    stock = Misbehave(service_app("stock", tmp_path), "prepare", "slow", delay_s=0.6)
    async with served(stock) as (url,):
        resource = HttpResource(url, name="stock", timeout_s=0.3, prepare_attempts_max=2,
                                apply_attempts_max=20, backoff_s_min=0.05, backoff_s_max=0.2)
        async with resource:
            with pytest.raises(HttpUnavailable, match=r"2 attempt\(s\) failed; last: no complete"):
                await resource.prepare("t1", WIDGET)
        # The slow prepares still run at the service after the client left; each
        # either undoes itself behind the abort or is refused by its barrier.
        await eventually(lambda: stock.seen == 2 and ledger_states("stock", tmp_path)
                         == {"t1": "aborted"} and prepared_markers("stock", tmp_path) == 0)
    assert amount("stock", tmp_path) == 10


async def test_a_500_is_retried_and_the_branch_then_commits(tmp_path: Path) -> None:
    stock = Misbehave(service_app("stock", tmp_path), "prepare", "status_500", times=1)
    async with served(stock) as (url,), fast(url) as resource:
        assert await resource.prepare("t1", WIDGET) is Vote.YES
        assert resource.retries == 1 and stock.seen == 1
        await resource.commit("t1")
        await resource.commit("t1")  # a redelivered decision changes nothing
        assert ledger_states("stock", tmp_path) == {"t1": "committed"}
    assert amount("stock", tmp_path) == 9


async def test_a_500_on_every_commit_raises_for_the_runtime_to_retry(tmp_path: Path) -> None:
    stock = Misbehave(service_app("stock", tmp_path), "commit", "status_500", times=5)
    async with served(stock) as (url,), fast(url) as resource:
        assert await resource.prepare("t1", WIDGET) is Vote.YES
        with pytest.raises(HttpUnavailable, match="'upstream busy, try again'"):
            await resource.commit("t1")
        assert ledger_states("stock", tmp_path) == {"t1": "prepared"}
        await resource.commit("t1")  # the runtime calls it again; now it lands
        assert ledger_states("stock", tmp_path) == {"t1": "committed"}


async def test_an_abort_before_its_prepare_makes_the_late_prepare_refuse(tmp_path: Path) -> None:
    async with served(service_app("stock", tmp_path)) as (url,), fast(url) as resource:
        await resource.abort("t1")  # presumed abort: unknown txid, answered ok
        with pytest.raises(HttpRefused, match="409"):
            await resource.prepare("t1", WIDGET)
        assert ledger_states("stock", tmp_path) == {"t1": "aborted"}
        assert prepared_markers("stock", tmp_path) == 0
        with pytest.raises(HttpContractError, match="refused a decision"):
            await resource.commit("t1")  # commit after abort is the caller's bug
    assert amount("stock", tmp_path) == 10


async def test_a_business_refusal_is_a_no_that_holds_nothing(tmp_path: Path) -> None:
    async with served(service_app("stock", tmp_path)) as (url,), fast(url) as resource:
        with pytest.raises(HttpRefused, match="refused the branch: 409"):
            await resource.prepare("t1", {"qty": 1000})
        assert resource.attempts == 1  # never retried, never followed by an abort
        assert ledger_states("stock", tmp_path) == {"t1": "refused"}


async def test_a_refused_port_and_an_unresolvable_host_are_unavailable(tmp_path: Path) -> None:
    for url in (f"http://127.0.0.1:{free_port()}", "http://dtxn-no-such-host.invalid"):
        async with fast(url) as resource:
            with pytest.raises(HttpUnavailable) as raised:
                await resource.prepare("t1", WIDGET)
            message = str(raised.value)
            assert f"service 'stock' ({url}/prepare) txid=t1" in message
            assert "ConnectError" in message and "did not land either" in message


async def test_a_payload_that_is_not_json_fails_before_anything_is_sent() -> None:
    async with fast(f"http://127.0.0.1:{free_port()}") as resource:
        with pytest.raises(HttpPayloadError, match="not JSON-encodable"):
            await resource.prepare("t1", {"qty": object()})
        assert resource.attempts == 0


async def test_the_service_rejects_a_request_whose_idempotency_key_does_not_match(
    tmp_path: Path,
) -> None:
    import httpx

    async with served(service_app("stock", tmp_path)) as (url,), httpx.AsyncClient() as client:
        body = {"txid": "t1", "branch": "stock", "op": "prepare", "payload": WIDGET}
        response = await client.post(f"{url}/prepare", json=body,
                                     headers={"Idempotency-Key": "t2:stock:prepare"})
        assert response.status_code == 400 and "Idempotency-Key" in response.text
        wrong = await client.post(f"{url}/prepare", json={**body, "branch": "order"},
                                  headers={"Idempotency-Key": "t1:order:prepare"})
        assert wrong.status_code == 400 and "serves branch 'stock'" in wrong.text
    assert ledger_states("stock", tmp_path) == {}
