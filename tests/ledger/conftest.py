"""Fixtures for the contract and client tests: one ledger per session, reverted per test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import RPCEndpoint

from ledger.client import UNLIMITED, LedgerClient, RedemptionRequest, SchemeKind, SchemeTerms
from ledger.compiler import Artifacts, compile_contracts
from ledger.deploy import Deployment, RoleGrant, deploy_ledger
from ledger.merkle import CohortLeaf, MerkleTree, cohort_leaf_hash
from ledger.passid import new_pass_secret, pass_id
from ledger.rpc import RpcClient
from wallet.eip712 import PassToken, sign_pass_token

REVERSAL_WINDOW_S = 3600
#: the cap of a test card token unless a test gives one
CARD_TEST_CAP = 1_000_000_000


_last_expiry = [0]


def _fresh_expiry(at_least: int) -> int:
    """A token expiry later than every earlier default one: each default token is a checkout of
    its own (a short-lived token serves one checkout; a newer one is always accepted)."""
    _last_expiry[0] = max(at_least, _last_expiry[0] + 1)
    return _last_expiry[0]


@dataclass
class LedgerEnv:
    """A deployed ledger with one account per role."""

    w3: Web3
    client: LedgerClient
    deployment: Deployment
    admin: LocalAccount
    issuer: LocalAccount
    merchant: LocalAccount
    other_merchant: LocalAccount
    pass_signer: LocalAccount
    pauser: LocalAccount
    settler: LocalAccount
    holder: LocalAccount
    outsider: LocalAccount

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def new_pass(self, *, holder_key: str | None = None, card_serial: int = 0) -> bytes:
        """Register a fresh pass pseudonym and return its id."""
        pid = pass_id(pass_secret=new_pass_secret(), pass_number=f"P{time.perf_counter_ns()}")
        self.client.transact(
            self.issuer,
            "registerPass",
            pid,
            holder_key or "0x0000000000000000000000000000000000000000",
            card_serial,
        )
        return pid

    def new_scheme(self, kind: SchemeKind = SchemeKind.BUDGET, **terms: int | bool) -> int:
        now = self.now()
        values: dict[str, int | bool] = {
            "valid_from": now - 60,
            "valid_until": now + 30 * 24 * 3600,
            "budget_cap": 1_000_000,
            "open_to_all_merchants": True,
        }
        if kind is SchemeKind.USES:
            values["unit_value"] = 350
        if kind is SchemeKind.DISCOUNT:
            values["discount_bps"] = 5000
            values["reimburse_bps"] = 10_000
            values["per_redemption_cap"] = 1_000_000_000  # a percentage needs a cap
        values.update(terms)
        scheme_terms = SchemeTerms(kind=kind, **values)  # type: ignore[arg-type]
        result = self.client.transact(self.issuer, "createScheme", scheme_terms.as_tuple())
        return int(result.named("SchemeCreated")[0].args["schemeId"])

    def redemption(
        self,
        pid: bytes,
        *,
        scheme_id: int,
        amount: int,
        redemption_id: int,
        signer: LocalAccount | None = None,
        serial: int = 0,
        expiry: int | None = None,
        amount_cap: int | None = None,
    ) -> RedemptionRequest:
        """A redemption with a pass token signed by ``signer`` (default: the pass signer).

        ``amount_cap`` defaults to none for a short-lived token and to a large one for a card
        (``serial`` != 0: a card token must carry a cap)."""
        if amount_cap is None:
            amount_cap = CARD_TEST_CAP if serial else 0
        token = PassToken(
            pass_id=pid,
            serial=serial,
            expiry=expiry if expiry is not None else _fresh_expiry(self.now() + 300),
            amount_cap=amount_cap,
        )
        signed = sign_pass_token(
            token, domain=self.client.domain, private_key=(signer or self.pass_signer).key
        )
        return RedemptionRequest(
            redemption_id=redemption_id, scheme_id=scheme_id, amount=amount, token=signed
        )


@pytest.fixture(scope="session")
def artifacts(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return compile_contracts(project_root=project_root, cache_dir=project_root / "var" / "build")


@pytest.fixture(scope="session")
def deployed(w3: Web3, artifacts: Artifacts, dev_accounts: list[LocalAccount]) -> LedgerEnv:
    admin, issuer, merchant, other, signer, pauser, settler, holder, outsider = dev_accounts[:9]
    deployment = deploy_ledger(
        w3,
        artifacts=artifacts,
        admin=admin,
        grants=[
            RoleGrant("issuer", issuer.address),
            RoleGrant("merchant", merchant.address),
            RoleGrant("merchant", other.address),
            RoleGrant("pass_signer", signer.address),
            RoleGrant("pauser", pauser.address),
            RoleGrant("settler", settler.address),
        ],
        reversal_window_s=REVERSAL_WINDOW_S,
    )
    client = LedgerClient(
        w3, address=deployment.ledger_address, abi=artifacts.get("StadjerspasLedger").abi
    )
    return LedgerEnv(
        w3=w3,
        client=client,
        deployment=deployment,
        admin=admin,
        issuer=issuer,
        merchant=merchant,
        other_merchant=other,
        pass_signer=signer,
        pauser=pauser,
        settler=settler,
        holder=holder,
        outsider=outsider,
    )


@pytest.fixture
def ledger(deployed: LedgerEnv, chain_snapshot: str) -> LedgerEnv:
    """The session's ledger; every change the test makes is reverted afterwards."""
    return deployed


@dataclass
class EveryEvent:
    """The schemes and passes of :func:`every_event`."""

    budget: int
    uses: int
    discount: int
    short: int
    passes: list[bytes]


def every_event(ledger: LedgerEnv, *, reference: bytes) -> EveryEvent:
    """Every event kind the contract emits, on the session's ledger (reverted after the test);
    the settlement carries ``reference``. The indexer and the audit tests tell the same story."""
    c, issuer, merchant = ledger.client, ledger.issuer, ledger.merchant
    budget = ledger.new_scheme(SchemeKind.BUDGET)
    uses = ledger.new_scheme(SchemeKind.USES)
    discount = ledger.new_scheme(SchemeKind.DISCOUNT, budget_cap=50_000)
    short = ledger.new_scheme(SchemeKind.BUDGET, valid_until=ledger.now() + 60)
    p1 = ledger.new_pass(holder_key=ledger.holder.address, card_serial=3)
    p2, p3, p4 = ledger.new_pass(), ledger.new_pass(), ledger.new_pass()
    c.transact(issuer, "setHolderKey", p4, ledger.outsider.address)
    c.transact(issuer, "replaceCard", p4, 7)
    c.transact(issuer, "blockPass", p3)
    c.transact(issuer, "unblockPass", p3)

    c.transact(issuer, "issue", budget, p1, 5_000)
    c.transact(issuer, "issueBatch", budget, [p2, p3], [3_000, 2_000])
    c.transact(issuer, "issueBatch", uses, [p1, p2], [10, 5])
    c.transact(issuer, "issue", discount, p1, UNLIMITED)
    c.transact(issuer, "issueBatch", discount, [p2, p3], [3, UNLIMITED])
    c.transact(issuer, "issueBatch", short, [p1, p2], [700, 400])

    leaves = [CohortLeaf(0, p3, 1_500), CohortLeaf(1, p4, 2_500)]
    tree = MerkleTree([cohort_leaf_hash(leaf) for leaf in leaves])
    c.transact(issuer, "issueCohort", budget, tree.root, 2, 4_000)

    def claim(i: int) -> tuple[bytes, int, bytes, int, list[bytes]]:
        return (tree.root, leaves[i].index, leaves[i].pass_id, leaves[i].amount, tree.proof(i))

    c.transact(ledger.outsider, "claim", claim(1))
    first = ledger.redemption(p3, scheme_id=budget, amount=1_000, redemption_id=10)
    c.transact(merchant, "claimAndRedeem", claim(0), first.as_tuple())
    c.transact(
        merchant,
        "redeem",
        ledger.redemption(p1, scheme_id=budget, amount=1_250, redemption_id=1).as_tuple(),
    )
    batch = [
        ledger.redemption(p2, scheme_id=budget, amount=500, redemption_id=2),
        ledger.redemption(p2, scheme_id=uses, amount=2, redemption_id=3),
        ledger.redemption(p3, scheme_id=budget, amount=99_999, redemption_id=4),  # rejected
        ledger.redemption(p1, scheme_id=discount, amount=2_000, redemption_id=5),
        ledger.redemption(p2, scheme_id=discount, amount=800, redemption_id=6),
        ledger.redemption(p2, scheme_id=short, amount=100, redemption_id=7),
    ]
    result = c.transact(merchant, "redeemBatch", [r.as_tuple() for r in batch])
    assert len(result.named("RedemptionRejected")) == 1
    receipt, root, proof = c.reversal_proof(result.events, 2)
    c.transact(merchant, "reverse", receipt.as_tuple(), root, proof)
    c.transact(
        ledger.other_merchant,
        "redeem",
        ledger.redemption(p4, scheme_id=budget, amount=300, redemption_id=8).as_tuple(),
    )
    c.transact(ledger.settler, "settle", merchant.address, 1_000, reference)
    for method, params in (("evm_increaseTime", [120]), ("evm_mine", [])):
        assert "error" not in ledger.w3.provider.make_request(RPCEndpoint(method), params)
    c.transact(issuer, "expire", short, [p1, p2, p3])
    return EveryEvent(budget, uses, discount, short, [p1, p2, p3, p4])


_CLIENTS: list[RpcClient] = []


def rpc_of(ledger: LedgerEnv) -> RpcClient:
    """A JSON-RPC client of the session's node, closed after the test."""
    client = RpcClient(ledger.w3.provider.endpoint_uri, timeout=10.0)  # type: ignore[attr-defined]
    _CLIENTS.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()
