"""Fixtures for the contract and client tests: one ledger per session, reverted per test."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ledger.client import LedgerClient, RedemptionRequest, SchemeKind, SchemeTerms
from ledger.compiler import Artifacts, compile_contracts
from ledger.deploy import Deployment, RoleGrant, deploy_ledger
from ledger.passid import new_pass_secret, pass_id
from wallet.eip712 import PassToken, sign_pass_token

REVERSAL_WINDOW_S = 3600


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
        amount_cap: int = 0,
    ) -> RedemptionRequest:
        """A redemption with a pass token signed by ``signer`` (default: the pass signer)."""
        token = PassToken(
            pass_id=pid,
            serial=serial,
            expiry=expiry if expiry is not None else self.now() + 300,
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
