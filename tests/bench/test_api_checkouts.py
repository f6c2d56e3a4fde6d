"""``bench.api`` under the one-checkout rule, without the service: each redemption of the load
carries a token of its own, one checkout per pass at a time; the balance check reads every demo
pass in batched ``eth_call``s; the service is started with a token lifetime it accepts and with
enough demo holders.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench._load import _BALANCE_OF, BENCH_HOLDERS, LoadConfig, _budget_total, _redeem_phase
from bench._tokens import CheckoutTokens
from bench.api import service_env
from wallet import Domain, decode_token_uri

DOMAIN = Domain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
LEDGER = DOMAIN.verifying_contract


def test_service_env_keeps_the_token_lifetime_the_service_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STADJERSPAS_TOKEN_LIFETIME_S", "600")  # inherited: would stop the service
    monkeypatch.setenv("STADJERSPAS_DATABASE_URL", "sqlite:///elsewhere.db")
    env = service_env(var_dir=tmp_path / "var", api_port=8001, anvil_port=8002)
    assert "STADJERSPAS_TOKEN_LIFETIME_S" not in env
    assert "STADJERSPAS_DATABASE_URL" not in env
    assert env["STADJERSPAS_DEMO_HOLDERS"] == str(BENCH_HOLDERS)
    assert BENCH_HOLDERS >= 1_000  # 300 checkouts/s at one per pass per second, with room

    custom = service_env(var_dir=tmp_path, api_port=1, anvil_port=2, holders=2_000)
    assert custom["STADJERSPAS_DEMO_HOLDERS"] == "2000"


def _rpc_transport(balances: dict[bytes, int], batches: list[int]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        calls = json.loads(request.content)
        batches.append(len(calls))
        answers = []
        for call in calls:
            data = bytes.fromhex(call["params"][0]["data"][2:])
            assert call["method"] == "eth_call"
            assert call["params"][0]["to"] == LEDGER
            assert data[:4] == _BALANCE_OF
            assert int.from_bytes(data[4:36], "big") == 7
            value = balances[data[36:68]]
            answers.append({"jsonrpc": "2.0", "id": call["id"], "result": f"0x{value:064x}"})
        return httpx.Response(200, json=answers)

    return httpx.MockTransport(handle)


def test_budget_total_reads_every_pass_in_batches() -> None:
    pass_ids = [i.to_bytes(32, "big") for i in range(1, 601)]
    balances = {pid: 15_000 - n for n, pid in enumerate(pass_ids)}
    batches: list[int] = []

    async def total() -> int:
        async with httpx.AsyncClient(transport=_rpc_transport(balances, batches)) as client:
            return await _budget_total(client, "http://node", LEDGER, 7, pass_ids)

    assert asyncio.run(total()) == sum(balances.values())
    assert batches == [250, 250, 100]


def test_budget_total_refuses_a_failed_call() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        calls = json.loads(request.content)
        return httpx.Response(
            200, json=[{"jsonrpc": "2.0", "id": c["id"], "error": {"code": -1}} for c in calls]
        )

    async def total() -> int:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
            return await _budget_total(client, "http://node", LEDGER, 7, [bytes(32)])

    with pytest.raises(RuntimeError, match="balanceOf failed"):
        asyncio.run(total())


class _Counter:
    """A stand-in for ``POST /merchant/redemptions``: answers 201 after ``delay_s`` and
    records each token, and whether a pass ever had two checkouts at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.tokens: list[str] = []
        self.in_flight: Counter[bytes] = Counter()
        self.overlaps = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body: dict[str, Any] = json.loads(await reader.readexactly(length))
                pass_id = decode_token_uri(body["token"]).token.pass_id
                self.tokens.append(body["token"])
                self.in_flight[pass_id] += 1
                if self.in_flight[pass_id] > 1:
                    self.overlaps += 1
                await asyncio.sleep(self.delay_s)
                self.in_flight[pass_id] -= 1
                answer = json.dumps({"tx_hash": "0x" + "ab" * 32, "debited": body["amount"]})
                writer.write(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(answer)}\r\n\r\n{answer}".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def _serving(counter: _Counter) -> AsyncIterator[str]:
    server = await asyncio.start_server(counter.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def test_every_redemption_is_a_checkout_with_a_token_of_its_own() -> None:
    passes = [bytes([n]) * 32 for n in range(1, 7)]
    counter = _Counter(delay_s=0.01)

    async def redeem() -> Any:
        tokens = CheckoutTokens(domain=DOMAIN, pass_ids=passes, rest_s=0.05)
        async with _serving(counter) as base_url:
            cfg = LoadConfig(
                base_url=base_url,
                rpc_url="",
                redeem_seconds=10.0,
                redeem_count=40,
                terminals_per_merchant=4,  # 8 terminals for 6 passes: some wait for a pass
            )
            tally, _ = await _redeem_phase(["t1", "t2"], tokens, scheme_id=1, cfg=cfg)
        return tally

    tally = asyncio.run(redeem())
    assert tally.sent == tally.statuses["201"] == len(counter.tokens) == 40
    assert tally.confirmed_amount == 40 * 100
    assert len(set(counter.tokens)) == 40  # no token sent twice
    assert counter.overlaps == 0  # never two checkouts of one pass at once
    assert tally.passes_used == set(range(len(passes)))
    assert tally.pass_waits > 0
    expiries: dict[bytes, list[int]] = {}
    for uri in counter.tokens:
        signed = decode_token_uri(uri)
        assert signed.domain == DOMAIN
        expiries.setdefault(signed.token.pass_id, []).append(signed.token.expiry)
    for sent in expiries.values():  # each checkout of a pass newer than the one before
        assert sent == sorted(sent)
        assert len(set(sent)) == len(sent)
