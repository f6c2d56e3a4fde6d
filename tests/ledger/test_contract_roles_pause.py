"""Roles and pausing: every state-changing function checks its role and the pause.

Each function is called with arguments that succeed for the right account on an unpaused ledger
(checked), so a refusal here is due to the role or the pause alone, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3.types import RPCEndpoint

from ledger import contract_errors as errors
from ledger.client import ROLES, MerchantTotals, SchemeKind, SchemeTerms
from ledger.merkle import CohortLeaf, MerkleTree, cohort_leaf_hash
from tests.ledger.conftest import LedgerEnv

ADMIN_ROLE = ROLES["admin"]


@dataclass
class Context:
    """A ledger with something in every corner, so each function has real arguments.

    "Nothing changed" is checked on the contract's whole storage root (``eth_getProof``).
    """

    env: LedgerEnv
    scheme: int
    ended_scheme: int
    pid: bytes
    blocked_pid: bytes
    cohort_root: bytes
    claims: list[tuple[bytes, int, bytes, int, list[bytes]]]
    receipt: tuple[tuple[Any, ...], bytes, list[bytes]]

    def fingerprint(self) -> str:
        """The ledger contract's storage root: equal if and only if no storage slot changed."""
        proof = _rpc(self.env, "eth_getProof", [self.env.client.address, [], "latest"])
        return str(proof["storageHash"])


def _rpc(env: LedgerEnv, method: str, params: list[Any]) -> Any:
    return env.w3.provider.make_request(RPCEndpoint(method), params)["result"]


@pytest.fixture(scope="module")
def _module_ctx(deployed: LedgerEnv) -> Iterator[tuple[Context, list[str]]]:
    """Build the context once per module; ``ctx`` reverts to it before each test."""
    outer = _rpc(deployed, "evm_snapshot", [])
    context = _build(deployed)
    snapshot = [_rpc(deployed, "evm_snapshot", [])]
    yield context, snapshot
    assert _rpc(deployed, "evm_revert", [outer])


@pytest.fixture
def ctx(_module_ctx: tuple[Context, list[str]]) -> Iterator[Context]:
    context, snapshot = _module_ctx
    yield context
    assert _rpc(context.env, "evm_revert", [snapshot[0]])
    snapshot[0] = _rpc(context.env, "evm_snapshot", [])


def _build(ledger: LedgerEnv) -> Context:
    now = ledger.now()
    scheme = ledger.new_scheme(open_to_all_merchants=False)
    ledger.client.transact(
        ledger.issuer, "setMerchantAllowed", scheme, ledger.other_merchant.address, True
    )
    ledger.client.transact(
        ledger.issuer, "setMerchantAllowed", scheme, ledger.merchant.address, True
    )
    ended = ledger.new_scheme(valid_from=now - 60, valid_until=now + 10)
    pid = ledger.new_pass(card_serial=1)
    blocked = ledger.new_pass()
    ledger.client.transact(ledger.issuer, "blockPass", blocked)
    ledger.client.transact(ledger.issuer, "issue", scheme, pid, 10_000)
    ledger.client.transact(ledger.issuer, "issue", ended, pid, 500)
    leaves = [CohortLeaf(0, ledger.new_pass(), 300), CohortLeaf(1, ledger.new_pass(), 400)]
    tree = MerkleTree([cohort_leaf_hash(leaf) for leaf in leaves])
    ledger.client.transact(ledger.issuer, "issueCohort", scheme, tree.root, 2, 700)
    claims = [(tree.root, x.index, x.pass_id, x.amount, tree.proof(x.index)) for x in leaves]
    request = ledger.redemption(pid, scheme_id=scheme, amount=1_000, redemption_id=1)
    result = ledger.client.transact(ledger.merchant, "redeem", request.as_tuple())
    receipt, root, proof = ledger.client.reversal_proof(result.events, 1)
    ledger.w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [20])
    ledger.w3.provider.make_request(RPCEndpoint("evm_mine"), [])
    return Context(
        ledger, scheme, ended, pid, blocked, tree.root, claims, (receipt.as_tuple(), root, proof)
    )


def _terms(c: Context) -> tuple[Any, ...]:
    now = c.env.now()
    return SchemeTerms(SchemeKind.BUDGET, now, now + 3_600, budget_cap=1).as_tuple()


def _redemption(c: Context, pid: bytes | None = None) -> tuple[Any, ...]:
    return c.env.redemption(
        pid or c.pid, scheme_id=c.scheme, amount=100, redemption_id=500
    ).as_tuple()


@dataclass(frozen=True)
class Call:
    function: str
    role: str | None  # the role the contract requires (None: no role modifier)
    caller: str  # the LedgerEnv account that may call it
    wrong: str  # an account holding some other role
    args: Callable[[Context], tuple[Any, ...]]


CALLS = [
    Call(
        "registerPass",
        "issuer",
        "issuer",
        "merchant",
        lambda c: (b"\xf1" * 32, c.env.holder.address, 0),
    ),
    Call("registerPasses", "issuer", "issuer", "settler", lambda c: ([b"\xf2" * 32], [])),
    Call(
        "setHolderKey", "issuer", "issuer", "pass_signer", lambda c: (c.pid, c.env.holder.address)
    ),
    Call("replaceCard", "issuer", "issuer", "merchant", lambda c: (c.pid, 2)),
    Call("blockPass", "issuer", "issuer", "pauser", lambda c: (c.pid,)),
    Call("unblockPass", "issuer", "issuer", "merchant", lambda c: (c.blocked_pid,)),
    Call("createScheme", "issuer", "issuer", "admin", lambda c: (_terms(c),)),
    Call(
        "setMerchantAllowed",
        "issuer",
        "issuer",
        "merchant",
        lambda c: (c.scheme, c.env.merchant.address, False),
    ),
    Call("issue", "issuer", "issuer", "settler", lambda c: (c.scheme, c.pid, 100)),
    Call("issueBatch", "issuer", "issuer", "admin", lambda c: (c.scheme, [c.pid], [100])),
    Call("issueCohort", "issuer", "issuer", "merchant", lambda c: (c.scheme, b"\xc0" * 32, 1, 100)),
    Call("expire", "issuer", "issuer", "settler", lambda c: (c.ended_scheme, [c.pid])),
    Call("redeem", "merchant", "merchant", "issuer", lambda c: (_redemption(c),)),
    Call(
        "claimAndRedeem",
        "merchant",
        "merchant",
        "pass_signer",
        lambda c: (c.claims[0], _redemption(c, c.claims[0][2])),
    ),
    Call("redeemBatch", "merchant", "merchant", "admin", lambda c: ([_redemption(c)],)),
    Call(
        "settle",
        "settler",
        "settler",
        "issuer",
        lambda c: (c.env.merchant.address, 100, b"\x01" * 32),
    ),
    Call("setReversalWindow", "admin", "admin", "issuer", lambda c: (7_200,)),
    Call("pause", "pauser", "pauser", "admin", lambda c: ()),
    Call(
        "grantRole",
        "admin",
        "admin",
        "issuer",
        lambda c: (ROLES["merchant"], c.env.outsider.address),
    ),
    Call(
        "revokeRole",
        "admin",
        "admin",
        "pauser",
        lambda c: (ROLES["merchant"], c.env.merchant.address),
    ),
    Call("claim", None, "outsider", "outsider", lambda c: (c.claims[1],)),
    Call("reverse", None, "merchant", "other_merchant", lambda c: c.receipt),
]
ROLE_CHECKED = [call for call in CALLS if call.role is not None]
PAUSABLE = [
    call
    for call in CALLS
    if call.function not in {"grantRole", "revokeRole", "setReversalWindow", "pause"}
]


def _account(c: Context, name: str) -> LocalAccount:
    account: LocalAccount = getattr(c.env, name)
    return account


def _pause(c: Context) -> None:
    c.env.client.transact(c.env.pauser, "pause")
    assert c.env.client.paused()


# ---------------------------------------------------------------- roles


@pytest.mark.parametrize("call", ROLE_CHECKED, ids=[call.function for call in ROLE_CHECKED])
@pytest.mark.parametrize("who", ["outsider", "wrong_role"])
def test_wrong_role_is_refused(ctx: Context, call: Call, who: str) -> None:
    caller = _account(ctx, "outsider" if who == "outsider" else call.wrong)
    args = call.args(ctx)
    before = ctx.fingerprint()

    with pytest.raises(errors.AccessControlUnauthorizedAccount) as refused:
        ctx.env.client.transact(caller, call.function, *args)

    assert refused.value.values == {"account": caller.address, "neededRole": ROLES[call.role or ""]}
    assert ctx.fingerprint() == before
    # The same arguments succeed for the account that holds the role.
    ctx.env.client.transact(_account(ctx, call.caller), call.function, *args)
    assert ctx.fingerprint() != before


def test_unpause_needs_the_pauser_role(ctx: Context) -> None:
    _pause(ctx)
    for caller in (ctx.env.outsider, ctx.env.admin, ctx.env.issuer):
        with pytest.raises(errors.AccessControlUnauthorizedAccount) as refused:
            ctx.env.client.transact(caller, "unpause")
        assert refused.value.values["neededRole"] == ROLES["pauser"]
        assert ctx.env.client.paused()
    ctx.env.client.transact(ctx.env.pauser, "unpause")
    assert not ctx.env.client.paused()


def test_claim_needs_no_role(ctx: Context) -> None:
    ctx.env.client.transact(ctx.env.outsider, "claim", ctx.claims[0])
    assert ctx.env.client.is_claimed(ctx.cohort_root, 0)


def test_reverse_by_a_non_merchant_is_refused(ctx: Context) -> None:
    before = ctx.fingerprint()
    with pytest.raises(errors.ReversalNotMerchant):
        ctx.env.client.transact(ctx.env.outsider, "reverse", *ctx.receipt)
    assert ctx.fingerprint() == before


def test_revoked_merchant_can_no_longer_redeem(ctx: Context) -> None:
    ctx.env.client.transact(
        ctx.env.admin, "revokeRole", ROLES["merchant"], ctx.env.merchant.address
    )
    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        ctx.env.client.transact(ctx.env.merchant, "redeem", _redemption(ctx))
    assert not ctx.env.client.is_redemption_used(500)


def test_granted_pass_signer_signs_valid_tokens(ctx: Context) -> None:
    request = ctx.env.redemption(
        ctx.pid, scheme_id=ctx.scheme, amount=100, redemption_id=600, signer=ctx.env.outsider
    )
    with pytest.raises(errors.RedemptionSignerNotAllowed):
        ctx.env.client.transact(ctx.env.merchant, "redeem", request.as_tuple())
    ctx.env.client.transact(
        ctx.env.admin, "grantRole", ROLES["pass_signer"], ctx.env.outsider.address
    )
    ctx.env.client.transact(ctx.env.merchant, "redeem", request.as_tuple())
    assert ctx.env.client.balance_of(ctx.scheme, ctx.pid) == 8_900


def test_renounce_role_for_someone_else_is_refused(ctx: Context) -> None:
    with pytest.raises(errors.AccessControlBadConfirmation):
        ctx.env.client.transact(
            ctx.env.outsider, "renounceRole", ROLES["merchant"], ctx.env.merchant.address
        )
    assert ctx.env.client.has_role("merchant", ctx.env.merchant.address)
    ctx.env.client.transact(
        ctx.env.merchant, "renounceRole", ROLES["merchant"], ctx.env.merchant.address
    )
    assert not ctx.env.client.has_role("merchant", ctx.env.merchant.address)


def test_roles_are_granted_as_deployed(ledger: LedgerEnv) -> None:
    expected = {
        "admin": ledger.admin,
        "issuer": ledger.issuer,
        "merchant": ledger.merchant,
        "pass_signer": ledger.pass_signer,
        "pauser": ledger.pauser,
        "settler": ledger.settler,
    }
    for role, account in expected.items():
        assert ledger.client.has_role(role, account.address)
        assert not ledger.client.has_role(role, ledger.outsider.address)
        assert not ledger.client.has_role(role, ledger.holder.address)
    assert ledger.client.has_role("merchant", ledger.other_merchant.address)
    for role_id in ROLES.values():
        assert ledger.client.contract.functions.getRoleAdmin(role_id).call() == ADMIN_ROLE


# ---------------------------------------------------------------- pause


@pytest.mark.parametrize("call", PAUSABLE, ids=[call.function for call in PAUSABLE])
def test_paused_refuses_every_state_change(ctx: Context, call: Call) -> None:
    args = call.args(ctx)
    caller = _account(ctx, call.caller)
    _pause(ctx)
    before = ctx.fingerprint()

    with pytest.raises(errors.EnforcedPause):
        ctx.env.client.transact(caller, call.function, *args)

    assert ctx.fingerprint() == before
    ctx.env.client.transact(ctx.env.pauser, "unpause")
    ctx.env.client.transact(caller, call.function, *args)


def test_pause_twice_and_unpause_when_not_paused_are_refused(ctx: Context) -> None:
    with pytest.raises(errors.ExpectedPause):
        ctx.env.client.transact(ctx.env.pauser, "unpause")
    assert not ctx.env.client.paused()
    _pause(ctx)
    with pytest.raises(errors.EnforcedPause):
        ctx.env.client.transact(ctx.env.pauser, "pause")
    assert ctx.env.client.paused()


def test_pause_events(ctx: Context) -> None:
    paused = ctx.env.client.transact(ctx.env.pauser, "pause")
    unpaused = ctx.env.client.transact(ctx.env.pauser, "unpause")
    # Paused/Unpaused come from OpenZeppelin's Pausable and are in the compiled ABI.
    assert [e.name for e in paused.events] == ["Paused"]
    assert paused.events[0].args == {"account": ctx.env.pauser.address}
    assert [e.name for e in unpaused.events] == ["Unpaused"]


def test_role_management_still_works_while_paused(ctx: Context) -> None:
    _pause(ctx)
    client = ctx.env.client
    client.transact(ctx.env.admin, "grantRole", ROLES["merchant"], ctx.env.outsider.address)
    assert client.has_role("merchant", ctx.env.outsider.address)
    client.transact(ctx.env.admin, "revokeRole", ROLES["merchant"], ctx.env.outsider.address)
    client.transact(ctx.env.merchant, "renounceRole", ROLES["merchant"], ctx.env.merchant.address)
    assert not client.has_role("merchant", ctx.env.merchant.address)
    assert client.paused()


def test_reads_still_work_while_paused(ctx: Context) -> None:
    _pause(ctx)
    client = ctx.env.client
    assert client.balance_of(ctx.scheme, ctx.pid) == 9_000
    assert client.pass_of(ctx.blocked_pid).blocked
    assert client.merchant_totals(ctx.env.merchant.address) == MerchantTotals(1_000, 0, 0)
    assert client.is_claimed(ctx.cohort_root, 0) is False


def test_set_reversal_window_is_refused_while_paused(ctx: Context) -> None:
    _pause(ctx)
    with pytest.raises(errors.EnforcedPause):
        ctx.env.client.transact(ctx.env.admin, "setReversalWindow", 7_200)
    assert ctx.env.client.reversal_window() == 3_600
