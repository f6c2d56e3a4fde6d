"""Shared set-up for benchmarks: a private anvil node, a fresh ledger deployment and its accounts.

:func:`bench_chain` starts an :class:`~ledger.node.AnvilNode` on a free port with its state in a
temporary directory (deleted afterwards), compiles the contracts (the compiler cache under
``var/build`` is shared with the tests), deploys ``StadjerspasLedger`` from the first dev account
and grants one account per role, in the same order as ``tests/ledger/conftest.py``.

Everything a benchmark sends is deterministic: the node starts from the same mnemonic, so the
ledger lands at the same address on every run; pass ids come from :func:`bench_pass_id` (a fixed
secret); pass tokens carry a fixed expiry (:data:`BENCH_EXPIRY`), so their EIP-712 digests and
RFC 6979 signatures, and with them every byte of call data, are the same on every run. Gas figures
therefore repeat exactly, which is what lets ``tests/ledger/test_gas.py`` pin them.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keys.datatypes import PrivateKey
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3

from ledger.client import LedgerClient, RedemptionRequest, SchemeKind, SchemeTerms
from ledger.compiler import Artifacts, compile_contracts
from ledger.deploy import Deployment, RoleGrant, deploy_contract, deploy_ledger
from ledger.errors import LedgerError
from ledger.node import DEV_MNEMONIC, AnvilConfig, AnvilNode
from wallet.eip712 import PassToken, sign_pass_token
from wallet.keys import as_private_key

__all__ = [
    "BENCH_EXPIRY",
    "PROJECT_ROOT",
    "BenchAccounts",
    "BenchChain",
    "BenchError",
    "SentTx",
    "bench_chain",
    "bench_pass_id",
    "bench_pass_ids",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHAIN_ID = 31337
REVERSAL_WINDOW_S = 3600

#: Expiry of every benchmark pass token: a fixed unix time (2106-02-07) with four non-zero bytes,
#: like a real ``now + 300``, so that signatures, and the gas of the call data, never change.
BENCH_EXPIRY = 2**32 - 1

_PASS_SECRET = hashlib.sha256(b"stadjerspas benchmark pass secret").digest()
_TX_TIMEOUT_S = 120.0


class BenchError(LedgerError):
    """A benchmark transaction failed or the set-up could not be completed."""


def bench_pass_id(label: str, index: int) -> bytes:
    """The deterministic pass id of benchmark pass ``label``/``index``.

    Computed exactly as :func:`ledger.passid.pass_id` does (HMAC-SHA256 of the pass number under a
    32-byte secret), without its per-call validation, so that 100,000 ids take milliseconds.
    """
    return hmac.new(_PASS_SECRET, f"{label}{index}".encode("ascii"), hashlib.sha256).digest()


def bench_pass_ids(label: str, count: int, *, start: int = 0) -> list[bytes]:
    """``count`` deterministic pass ids ``label + str(i)`` for ``i`` from ``start``."""
    return [bench_pass_id(label, i) for i in range(start, start + count)]


@dataclass(frozen=True)
class BenchAccounts:
    """One dev account per role (the same assignment as the ledger tests)."""

    admin: LocalAccount
    issuer: LocalAccount
    merchant: LocalAccount
    other_merchant: LocalAccount
    pass_signer: LocalAccount
    pauser: LocalAccount
    settler: LocalAccount
    holder: LocalAccount
    outsider: LocalAccount

    @classmethod
    def from_mnemonic(cls, mnemonic: str = DEV_MNEMONIC) -> BenchAccounts:
        Account.enable_unaudited_hdwallet_features()
        keys = [
            Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}") for i in range(9)
        ]
        return cls(*keys)


@dataclass(frozen=True)
class SentTx:
    """A mined, successful transaction."""

    transaction_hash: bytes
    block_number: int
    gas_used: int
    input_data: bytes
    logs: list[dict[str, Any]]

    @property
    def hash_hex(self) -> str:
        return HexBytes(self.transaction_hash).to_0x_hex()


@dataclass
class BenchChain:
    """A running node with a freshly deployed ledger."""

    node: AnvilNode
    w3: Web3
    artifacts: Artifacts
    deployment: Deployment
    client: LedgerClient
    accounts: BenchAccounts
    _signing_keys: dict[str, PrivateKey] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ chain

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def send(self, account: LocalAccount, to: str, data: bytes) -> SentTx:
        """Estimate, sign, send and wait for one call; raise :class:`BenchError` if it fails."""
        sender = account.address
        call = {"from": sender, "to": to_checksum_address(to), "data": "0x" + data.hex()}
        estimate = int(self.w3.eth.estimate_gas(cast(Any, call)))
        tx = {
            "from": sender,
            "to": to_checksum_address(to),
            "data": data,
            "nonce": int(self.w3.eth.get_transaction_count(sender, "pending")),
            "gas": estimate + estimate // 5 + 10_000,
            "gasPrice": 0,
            "chainId": CHAIN_ID,
        }
        signed = account.sign_transaction(cast(Any, tx))
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=_TX_TIMEOUT_S, poll_latency=0.01
        )
        if receipt["status"] != 1:
            raise BenchError(f"transaction {HexBytes(tx_hash).to_0x_hex()} reverted")
        return SentTx(
            transaction_hash=bytes(receipt["transactionHash"]),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            input_data=data,
            logs=[dict(log) for log in receipt["logs"]],
        )

    def advance(self, seconds: int) -> None:
        """Move the node's clock ``seconds`` ahead and mine a block at that time."""
        self.node.rpc("evm_increaseTime", [seconds])
        self.node.rpc("evm_mine", [])

    def ledger_tx(self, account: LocalAccount, function: str, *args: Any) -> SentTx:
        """Send ``function(*args)`` to the ledger (preflighted through :meth:`send`)."""
        return self.send(account, self.client.address, self.client.call_data(function, *args))

    def deploy(self, name: str, *constructor_args: Any) -> ChecksumAddress:
        """Deploy another compiled contract (e.g. ``BenchToken``) from the admin account."""
        address, _ = deploy_contract(
            self.w3,
            artifact=self.artifacts.get(name),
            deployer=self.accounts.admin,
            constructor_args=constructor_args,
        )
        return address

    def trace(self, transaction_hash: bytes, *, timeout_s: float = 300.0) -> dict[str, Any]:
        """``debug_traceTransaction`` with the default struct logger (stack and storage on)."""
        result = self.node.rpc(
            "debug_traceTransaction",
            [HexBytes(transaction_hash).to_0x_hex(), {"enableMemory": False}],
            timeout_s=timeout_s,
        )
        if not isinstance(result, dict):
            raise BenchError(f"debug_traceTransaction returned {type(result).__name__}")
        return cast(dict[str, Any], result)

    # ------------------------------------------------------------ ledger helpers

    def create_scheme(self, kind: SchemeKind = SchemeKind.BUDGET, **terms: int | bool) -> int:
        """Create a scheme that is open now (valid from a minute ago for 30 days)."""
        now = self.now()
        values: dict[str, int | bool] = {
            "valid_from": now - 60,
            "valid_until": now + 30 * 24 * 3600,
            "budget_cap": 10**12,
            "open_to_all_merchants": True,
        }
        values.update(terms)
        scheme_terms = SchemeTerms(kind=kind, **values)  # type: ignore[arg-type]
        self.ledger_tx(self.accounts.issuer, "createScheme", scheme_terms.as_tuple())
        return self.client.scheme_count()

    def register_passes(self, pass_ids: Sequence[bytes], *, chunk: int = 500) -> None:
        """Register passes (without holder key or card) in chunks of ``chunk`` per transaction."""
        for start in range(0, len(pass_ids), chunk):
            self.ledger_tx(
                self.accounts.issuer, "registerPasses", list(pass_ids[start : start + chunk]), []
            )

    def redemption(
        self,
        pass_id: bytes,
        *,
        scheme_id: int,
        amount: int,
        redemption_id: int,
        signer: LocalAccount | None = None,
        expiry: int = BENCH_EXPIRY,
    ) -> RedemptionRequest:
        """A redemption with a pass token signed by ``signer`` (default: the pass signer)."""
        account = signer or self.accounts.pass_signer
        key = self._signing_keys.get(account.address)
        if key is None:
            key = self._signing_keys[account.address] = as_private_key(account.key)
        token = PassToken(pass_id=pass_id, serial=0, expiry=expiry)
        signed = sign_pass_token(token, domain=self.client.domain, private_key=key)
        return RedemptionRequest(
            redemption_id=redemption_id, scheme_id=scheme_id, amount=amount, token=signed
        )


@contextmanager
def bench_chain(
    *,
    project_root: Path = PROJECT_ROOT,
    cache_dir: Path | None = None,
    reversal_window_s: int = REVERSAL_WINDOW_S,
    steps_tracing: bool = True,
    artifacts: Artifacts | None = None,
) -> Iterator[BenchChain]:
    """A private anvil (port 0, temporary state directory) with a fresh ledger; cleaned up on exit.

    ``steps_tracing`` starts anvil with ``--steps-tracing``: without it ``debug_traceTransaction``
    returns no struct logs. It records every step of every transaction, which costs the node some
    speed, so throughput benchmarks should turn it off. ``artifacts`` replaces the project's own
    build (e.g. a modified copy of ``contracts/`` compiled to try out a gas optimisation).
    """
    if artifacts is None:
        artifacts = compile_contracts(
            project_root=project_root, cache_dir=cache_dir or project_root / "var" / "build"
        )
    accounts = BenchAccounts.from_mnemonic()
    with tempfile.TemporaryDirectory(prefix="stadjerspas-bench-") as tmp:
        config = AnvilConfig(
            state_dir=Path(tmp),
            port=0,
            chain_id=CHAIN_ID,
            mnemonic=DEV_MNEMONIC,
            persist_state=False,
            project_root=project_root,
            extra_args=("--steps-tracing",) if steps_tracing else (),
        )
        with AnvilNode(config) as node:
            w3 = Web3(HTTPProvider(node.rpc_url, cache_allowed_requests=True))
            a = accounts
            deployment = deploy_ledger(
                w3,
                artifacts=artifacts,
                admin=a.admin,
                grants=[
                    RoleGrant("issuer", a.issuer.address),
                    RoleGrant("merchant", a.merchant.address),
                    RoleGrant("merchant", a.other_merchant.address),
                    RoleGrant("pass_signer", a.pass_signer.address),
                    RoleGrant("pauser", a.pauser.address),
                    RoleGrant("settler", a.settler.address),
                ],
                reversal_window_s=reversal_window_s,
            )
            client = LedgerClient(
                w3,
                address=deployment.ledger_address,
                abi=artifacts.get("StadjerspasLedger").abi,
            )
            yield BenchChain(
                node=node,
                w3=w3,
                artifacts=artifacts,
                deployment=deployment,
                client=client,
                accounts=accounts,
            )
