"""Pass tokens for load runs, one per checkout, as holder pages make them.

A short-lived pass token serves one checkout (docs/security.md): the contract refuses a token of a
pass that expires no later than the newest one redeemed. So a load run cannot send one token many
times, nor two checkouts of one pass at once (the newer could be mined first and spend the
older). :class:`CheckoutTokens` hands out the demo passes one checkout at a time: a pass is busy
until its redemption is answered and then rests ``rest_s`` (a holder walks from one counter to
the next), and each checkout gets a token signed now with the development pass-signer key,
expiring later than the pass's previous one and within the service's token lifetime.

The pass ids come from the run's own registry (:func:`demo_pass_ids`): the benchmark owns that
database, and reading it saves a holder login per pass (an Argon2 hash each).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from eth_account import Account
from sqlalchemy import create_engine, text

from api.runtime import DEV_ACCOUNT_INDEX
from ledger.node import DEV_MNEMONIC
from wallet import Domain, PassToken, encode_token_uri, sign_pass_token
from wallet.keys import as_private_key

__all__ = ["CheckoutTokens", "demo_merchant_addresses", "demo_pass_ids", "dev_pass_signer_key"]


def dev_pass_signer_key() -> bytes:
    """The development pass-signer key (the anvil mnemonic's account for that role)."""
    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(
        DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{DEV_ACCOUNT_INDEX['pass_signer']}"
    )
    return bytes(account.key)


def demo_pass_ids(database_url: str, pass_numbers: Sequence[str]) -> list[bytes]:
    """The on-chain pass ids of ``pass_numbers``, in that order, from the run's registry."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT pass_number, pass_id FROM registry_pass")).all()
    finally:
        engine.dispose()
    found = {str(number): bytes.fromhex(str(pid).removeprefix("0x")) for number, pid in rows}
    missing = [n for n in pass_numbers if n not in found]
    if missing:
        raise LookupError(f"{len(missing)} demo passes are not in the registry, e.g. {missing[0]}")
    return [found[n] for n in pass_numbers]


def demo_merchant_addresses(database_url: str, count: int) -> list[str]:
    """The chain addresses of merchants 1..``count`` from the run's registry (the service
    created their keys when it enrolled them: they come from no mnemonic)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, address FROM registry_merchant WHERE id <= :n ORDER BY id"),
                {"n": count},
            ).all()
    finally:
        engine.dispose()
    if len(rows) < count:
        raise LookupError(f"the registry holds {len(rows)} of the {count} demo merchants")
    return [str(address) for _, address in rows]


class CheckoutTokens:
    """One checkout at a time per pass, each with a token of its own (see the module)."""

    def __init__(
        self,
        *,
        domain: Domain,
        pass_ids: Sequence[bytes],
        lifetime_s: int = 100,
        rest_s: float = 1.0,
    ) -> None:
        if not pass_ids:
            raise ValueError("no passes to hand out")
        self.domain = domain
        self.pass_ids = list(pass_ids)
        self.lifetime_s = lifetime_s
        self.rest_s = rest_s
        self._key = as_private_key(dev_pass_signer_key())
        self._last_expiry = [0] * len(self.pass_ids)
        self._free: asyncio.Queue[int] | None = None

    def _queue(self) -> asyncio.Queue[int]:
        if self._free is None:
            self._free = asyncio.Queue()
            for index in range(len(self.pass_ids)):
                self._free.put_nowait(index)
        return self._free

    def mint(self, index: int) -> str:
        """A new token for pass ``index``, newer than its last one."""
        expiry = max(int(time.time()) + self.lifetime_s, self._last_expiry[index] + 1)
        self._last_expiry[index] = expiry
        token = PassToken(pass_id=self.pass_ids[index], serial=0, expiry=expiry)
        return encode_token_uri(sign_pass_token(token, domain=self.domain, private_key=self._key))

    async def take(self) -> tuple[int, str]:
        """A free pass and a fresh token for its checkout (waits for one to be free)."""
        index = await self._queue().get()
        return index, self.mint(index)

    def give_back(self, index: int) -> None:
        """The checkout of pass ``index`` is answered: free it after ``rest_s``."""
        queue = self._queue()
        asyncio.get_running_loop().call_later(self.rest_s, queue.put_nowait, index)
