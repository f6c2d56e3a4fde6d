"""Deploy the ledger contract and keep a record of the deployment under ``var/``.

Deployment runs once, before any relayer, from a single admin account: it creates the contract
and grants the initial roles with consecutive nonces and waits for each receipt. The record
(chain id, addresses, block, ABI hash) lets a restarted service find the same contract, and lets
it refuse to run against another chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3

from ledger.client import ROLES, LedgerClient
from ledger.compiler import Artifacts, ContractArtifact
from ledger.errors import DeploymentError

__all__ = [
    "DEFAULT_REVERSAL_WINDOW_S",
    "Deployment",
    "RoleGrant",
    "abi_sha256",
    "deploy_contract",
    "deploy_ledger",
    "load_deployment",
    "save_deployment",
]

DEFAULT_REVERSAL_WINDOW_S = 14 * 24 * 3600
DEPLOY_GAS_LIMIT = 6_000_000
GRANT_GAS_LIMIT = 120_000


@dataclass(frozen=True, slots=True)
class RoleGrant:
    role: str
    account: str


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the ledger lives. Saved as JSON; compared on every start."""

    chain_id: int
    ledger_address: ChecksumAddress
    admin: ChecksumAddress
    deployed_block: int
    deployed_block_hash: str
    transaction_hash: str
    abi_sha256: str
    source_hash: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Deployment:
        try:
            return cls(
                chain_id=int(data["chain_id"]),
                ledger_address=to_checksum_address(str(data["ledger_address"])),
                admin=to_checksum_address(str(data["admin"])),
                deployed_block=int(data["deployed_block"]),
                deployed_block_hash=str(data["deployed_block_hash"]),
                transaction_hash=str(data["transaction_hash"]),
                abi_sha256=str(data["abi_sha256"]),
                source_hash=str(data["source_hash"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise DeploymentError(f"deployment record is incomplete or malformed: {exc}") from None


def abi_sha256(abi: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(
        json.dumps(abi, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def save_deployment(deployment: Deployment, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(deployment.to_json(), handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def load_deployment(path: Path) -> Deployment | None:
    """The saved deployment, or ``None`` if there is none yet."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeploymentError(f"cannot read deployment record {path}: {exc}") from None
    return Deployment.from_json(data)


def _send(w3: Web3, account: LocalAccount, tx: dict[str, Any]) -> Any:
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
    if receipt["status"] != 1:
        raise DeploymentError(f"transaction {HexBytes(tx_hash).to_0x_hex()} reverted")
    return receipt


def _base_tx(w3: Web3, account: LocalAccount, nonce: int, gas: int) -> dict[str, Any]:
    return {
        "from": account.address,
        "nonce": nonce,
        "gas": gas,
        "gasPrice": int(w3.eth.gas_price),
        "chainId": int(w3.eth.chain_id),
    }


def deploy_contract(
    w3: Web3,
    *,
    artifact: ContractArtifact,
    deployer: LocalAccount,
    constructor_args: Sequence[Any] = (),
) -> tuple[ChecksumAddress, Any]:
    """Create ``artifact`` with ``constructor_args``; returns its address and the receipt."""
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    nonce = int(w3.eth.get_transaction_count(deployer.address, "pending"))
    tx = factory.constructor(*constructor_args).build_transaction(
        _base_tx(w3, deployer, nonce, DEPLOY_GAS_LIMIT)
    )
    receipt = _send(w3, deployer, dict(tx))
    address = receipt["contractAddress"]
    if not address:
        raise DeploymentError("contract creation returned no address")
    return to_checksum_address(address), receipt


def grant_roles(
    w3: Web3, client: LedgerClient, *, admin: LocalAccount, grants: Iterable[RoleGrant]
) -> None:
    """Grant roles from the admin account (skipping ones already held)."""
    nonce = int(w3.eth.get_transaction_count(admin.address, "pending"))
    for grant in grants:
        if grant.role not in ROLES:
            raise DeploymentError(f"unknown role {grant.role!r}; roles are {sorted(ROLES)}")
        if client.has_role(grant.role, grant.account):
            continue
        data = client.call_data("grantRole", ROLES[grant.role], to_checksum_address(grant.account))
        tx = _base_tx(w3, admin, nonce, GRANT_GAS_LIMIT) | {"to": client.address, "data": data}
        _send(w3, admin, tx)
        nonce += 1


def deploy_ledger(
    w3: Web3,
    *,
    artifacts: Artifacts,
    admin: LocalAccount,
    grants: Iterable[RoleGrant] = (),
    reversal_window_s: int = DEFAULT_REVERSAL_WINDOW_S,
) -> Deployment:
    """Deploy ``StadjerspasLedger`` with ``admin`` as governance and grant ``grants``."""
    artifact = artifacts.get("StadjerspasLedger")
    address, receipt = deploy_contract(
        w3, artifact=artifact, deployer=admin, constructor_args=(admin.address, reversal_window_s)
    )
    client = LedgerClient(w3, address=address, abi=artifact.abi)
    grant_roles(w3, client, admin=admin, grants=grants)
    return Deployment(
        chain_id=int(w3.eth.chain_id),
        ledger_address=address,
        admin=to_checksum_address(admin.address),
        deployed_block=int(receipt["blockNumber"]),
        deployed_block_hash=HexBytes(receipt["blockHash"]).to_0x_hex(),
        transaction_hash=HexBytes(receipt["transactionHash"]).to_0x_hex(),
        abi_sha256=abi_sha256(artifact.abi),
        source_hash=artifacts.source_hash,
    )


def check_deployment(w3: Web3, deployment: Deployment, *, artifact: ContractArtifact) -> None:
    """Refuse to run against another chain, a vanished contract, or a changed ABI."""
    chain_id = int(w3.eth.chain_id)
    if chain_id != deployment.chain_id:
        raise DeploymentError(
            f"the node is chain {chain_id} but the ledger was deployed on chain "
            f"{deployment.chain_id}"
        )
    if not w3.eth.get_code(deployment.ledger_address):
        raise DeploymentError(
            f"no contract code at {deployment.ledger_address} on chain {chain_id}"
        )
    if abi_sha256(artifact.abi) != deployment.abi_sha256:
        raise DeploymentError(
            "the compiled ledger ABI differs from the deployed one; deploy again or check out the "
            "sources it was deployed from"
        )
