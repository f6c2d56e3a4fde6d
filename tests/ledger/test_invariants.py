"""Stateful property test on the real anvil: random sequences of issue / issueBatch / redeem /
redeemBatch / reverse / settle / expire over three schemes of different kinds, four passes and two
merchants. After every step the accounting identities of the design must hold:

- per scheme: issued = remaining + redeemed(debited) - reversed(debited) + expired, where the left
  side and the flows come from the decoded events of every transaction and ``remaining`` is the sum
  of the contract's ``balanceOf`` over the passes;
- per scheme: the committed budget equals issued value (Budget, Uses) or reimbursed minus reversed
  credits (Discount), and never exceeds the cap;
- per merchant: ``merchantAccount`` equals the event sums and settled <= redeemed - reversed.

Each example runs between ``evm_snapshot`` and ``evm_revert`` on a shared base state.
"""

from __future__ import annotations

import json
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from eth_abi import decode
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from web3.types import RPCEndpoint

from ledger import contract_errors as errors
from ledger.abi import abi_type
from ledger.client import RedemptionRequest, SchemeKind, TxResult
from ledger.events import DecodedEvent
from tests.ledger.conftest import LedgerEnv

DAY = 24 * 3600
UNIT_VALUE = 250
DISCOUNT_BPS, REIMBURSE_BPS, DISCOUNT_CAP = 2_000, 5_000, 300
PASSES = 4


@dataclass
class Base:
    """The state every example starts from."""

    budget: int
    uses: int  # ends after two days: the one that gets expired
    discount: int
    passes: list[bytes]
    kinds: dict[int, SchemeKind]
    events: list[DecodedEvent]  # of the set-up transactions, counted like any other


def _rpc(env: LedgerEnv, method: str, params: list[Any]) -> Any:
    response = env.w3.provider.make_request(RPCEndpoint(method), params)
    assert "error" not in response, response
    return response["result"]


class Reader:
    """Many view calls in one JSON-RPC batch (web3's per-call overhead would dominate the test)."""

    def __init__(self, env: LedgerEnv) -> None:
        self.env = env
        self.url = str(env.w3.provider.endpoint_uri)  # type: ignore[attr-defined]
        self.outputs = {
            str(f["name"]): [abi_type(o) for o in f["outputs"]]
            for f in env.client.abi
            if f.get("type") == "function"
        }

    def calls(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        to = self.env.client.address
        body = [
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "eth_call",
                "params": [
                    {"to": to, "data": "0x" + self.env.client.call_data(fn, *args).hex()},
                    "latest",
                ],
            }
            for i, (fn, args) in enumerate(calls)
        ]
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            replies = sorted(json.loads(response.read()), key=lambda r: r["id"])
        results = []
        for (fn, _), reply in zip(calls, replies, strict=True):
            assert "error" not in reply, (fn, reply)
            results.append(decode(self.outputs[fn], bytes.fromhex(reply["result"][2:])))
        return results


class LedgerMachine(RuleBasedStateMachine):
    env: ClassVar[LedgerEnv]
    base: ClassVar[Base]
    reader: ClassVar[Reader]

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = _rpc(self.env, "evm_snapshot", [])
        b = self.base
        self.schemes = [b.budget, b.uses, b.discount]
        self.merchants: list[LocalAccount] = [self.env.merchant, self.env.other_merchant]
        # Event sums.
        self.issued: dict[int, int] = defaultdict(int)
        self.debited: dict[int, int] = defaultdict(int)
        self.restored: dict[int, int] = defaultdict(int)
        self.expired: dict[int, int] = defaultdict(int)
        self.scheme_credited: dict[int, int] = defaultdict(int)
        self.scheme_uncredited: dict[int, int] = defaultdict(int)
        self.redeemed: dict[str, int] = defaultdict(int)
        self.reversed: dict[str, int] = defaultdict(int)
        self.settled: dict[str, int] = defaultdict(int)
        # Bookkeeping for later steps.
        self.next_id = 1
        self.used_ids: list[int] = []
        self.redemptions: list[tuple[int, list[DecodedEvent]]] = []
        self.references = 0
        self._apply(b.events)

    def teardown(self) -> None:
        assert _rpc(self.env, "evm_revert", [self.snapshot])

    # ------------------------------------------------------------ helpers

    def _transact(
        self,
        account: LocalAccount,
        function: str,
        *args: Any,
        allowed: tuple[type[errors.ContractRevert], ...],
    ) -> TxResult | errors.ContractRevert:
        try:
            result = self.env.client.transact(account, function, *args)
        except allowed as refused:
            return refused
        self._apply(result.events)
        return result

    def _apply(self, events: list[DecodedEvent]) -> None:
        kinds = self.base.kinds
        for event in events:
            a = event.args
            if event.name == "EntitlementIssued":
                self.issued[a["schemeId"]] += a["amount"]
            elif event.name == "EntitlementsIssued":  # one event for a whole issueBatch
                self.issued[a["schemeId"]] += sum(a["amounts"])
            elif event.name == "Redeemed":
                scheme = a["schemeId"]
                self.debited[scheme] += a["debited"]
                self.scheme_credited[scheme] += a["credited"]
                self.redeemed[a["merchant"]] += a["credited"]
                self.used_ids.append(a["redemptionId"])
                kind = kinds[scheme]
                if kind is SchemeKind.BUDGET:
                    assert (a["debited"], a["credited"]) == (a["amount"], a["amount"])
                elif kind is SchemeKind.USES:
                    assert (a["debited"], a["credited"]) == (a["amount"], a["amount"] * UNIT_VALUE)
                else:
                    granted = min(a["amount"] * DISCOUNT_BPS // 10_000, DISCOUNT_CAP)
                    assert (a["debited"], a["discount"]) == (1, granted)
                    assert a["credited"] == granted * REIMBURSE_BPS // 10_000
            elif event.name == "Reversed":
                self.restored[a["schemeId"]] += a["debited"]
                self.scheme_uncredited[a["schemeId"]] += a["credited"]
                self.reversed[a["merchant"]] += a["credited"]
            elif event.name == "EntitlementExpired":
                self.expired[a["schemeId"]] += a["amount"]
            elif event.name == "Settled":
                self.settled[a["merchant"]] += a["amount"]

    def _request(
        self, scheme: int, pass_index: int, amount: int, *, holder_signs: bool, rid: int
    ) -> RedemptionRequest:
        signer = self.env.holder if holder_signs else self.env.pass_signer
        return self.env.redemption(
            self.base.passes[pass_index],
            scheme_id=scheme,
            amount=amount,
            redemption_id=rid,
            signer=signer,
        )

    def _amount(self, scheme_id: int, pass_index: int, percent: int) -> int:
        """A price (Discount), else ``percent`` of what is left (0 and over 100 included)."""
        if self.base.kinds[scheme_id] is SchemeKind.DISCOUNT:
            return percent * 40
        balance = self.env.client.balance_of(scheme_id, self.base.passes[pass_index])
        return max(percent // 100, balance * percent // 100)

    def _fresh_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # ------------------------------------------------------------ rules

    schemes_st = st.integers(min_value=0, max_value=2)
    passes_st = st.integers(min_value=0, max_value=PASSES - 1)

    @rule(scheme=schemes_st, pass_index=passes_st, amount=st.integers(1, 4_000))
    def issue(self, scheme: int, pass_index: int, amount: int) -> None:
        scheme_id = self.schemes[scheme]
        if self.base.kinds[scheme_id] is not SchemeKind.BUDGET:
            amount = amount % 6 + 1
        self._transact(
            self.env.issuer,
            "issue",
            scheme_id,
            self.base.passes[pass_index],
            amount,
            allowed=(errors.SchemeBudgetExceeded, errors.SchemeEnded),
        )

    @rule(
        scheme=schemes_st,
        items=st.lists(st.tuples(passes_st, st.integers(1, 3_000)), min_size=1, max_size=4),
    )
    def issue_batch(self, scheme: int, items: list[tuple[int, int]]) -> None:
        scheme_id = self.schemes[scheme]
        small = self.base.kinds[scheme_id] is not SchemeKind.BUDGET
        pids = [self.base.passes[p] for p, _ in items]
        amounts = [a % 6 + 1 if small else a for _, a in items]
        result = self._transact(
            self.env.issuer,
            "issueBatch",
            scheme_id,
            pids,
            amounts,
            allowed=(errors.SchemeBudgetExceeded, errors.SchemeEnded),
        )
        if isinstance(result, TxResult):
            logged = [e.args["amount"] for e in result.named("EntitlementIssued")]
            for event in result.named("EntitlementsIssued"):
                assert list(event.args["passIds"]) == pids
                logged += event.args["amounts"]
            assert sorted(logged) == sorted(amounts)

    @rule(
        scheme=schemes_st,
        pass_index=passes_st,
        percent=st.integers(0, 120),
        merchant=st.integers(0, 1),
        holder_signs=st.integers(0, 3).map(lambda n: n == 0),
        reuse=st.integers(0, 5).map(lambda n: n == 0),
    )
    def redeem(
        self,
        scheme: int,
        pass_index: int,
        percent: int,
        merchant: int,
        holder_signs: bool,
        reuse: bool,
    ) -> None:
        scheme_id = self.schemes[scheme]
        amount = self._amount(scheme_id, pass_index, percent)
        reused = reuse and bool(self.used_ids)
        rid = self.used_ids[percent % len(self.used_ids)] if reused else self._fresh_id()
        request = self._request(scheme_id, pass_index, amount, holder_signs=holder_signs, rid=rid)
        result = self._transact(
            self.merchants[merchant],
            "redeem",
            request.as_tuple(),
            allowed=(errors.RedemptionRefused,),
        )
        if reused:
            assert isinstance(result, errors.RedemptionIdUsed), result
        if isinstance(result, TxResult):
            self.redemptions.append((rid, result.events))

    @rule(
        items=st.lists(
            st.tuples(
                schemes_st,
                passes_st,
                st.integers(0, 60),
                st.sampled_from(["good"] * 4 + ["reused", "twice", "outsider", "expired"]),
            ),
            min_size=1,
            max_size=5,
        ),
        merchant=st.integers(0, 1),
    )
    def redeem_batch(self, items: list[tuple[int, int, int, str]], merchant: int) -> None:
        requests: list[RedemptionRequest] = []
        bad: dict[int, str] = {}  # position -> expected refusal
        batch_ids: list[int] = []
        for scheme, pass_index, percent, flavour in items:
            scheme_id = self.schemes[scheme]
            amount = self._amount(scheme_id, pass_index, percent)
            rid = self._fresh_id()
            signer = self.env.pass_signer
            expiry = None
            if flavour == "reused" and self.used_ids:
                rid = self.used_ids[percent % len(self.used_ids)]
                bad[len(requests)] = "RedemptionIdUsed"
            elif flavour == "twice" and batch_ids:
                rid = batch_ids[0]
                bad[len(requests)] = "RedemptionIdUsed?"  # used only if the first one was accepted
            elif flavour == "outsider":
                signer = self.env.outsider
                bad[len(requests)] = "any"
            elif flavour == "expired":
                expiry = self.env.now() - 1
                bad[len(requests)] = "any"
            batch_ids.append(rid)
            requests.append(
                self.env.redemption(
                    self.base.passes[pass_index],
                    scheme_id=scheme_id,
                    amount=amount,
                    redemption_id=rid,
                    signer=signer,
                    expiry=expiry,
                )
            )
        result = self._transact(
            self.merchants[merchant],
            "redeemBatch",
            [r.as_tuple() for r in requests],
            allowed=(),
        )
        assert isinstance(result, TxResult)
        outcomes = [(e.name, e.args) for e in result.events if e.name != "ReceiptsRecorded"]
        assert len(outcomes) == len(requests)
        selectors = {
            name: selector
            for selector, (name, _, _) in errors.error_selectors(self.env.client.abi).items()
        }
        accepted_ids: set[int] = set()
        for position, (name, args) in enumerate(outcomes):
            assert args["redemptionId"] == batch_ids[position]
            expected = bad.get(position)
            if expected == "RedemptionIdUsed":
                assert name == "RedemptionRejected"
                assert args["reason"] == selectors["RedemptionIdUsed"]
            elif expected == "RedemptionIdUsed?" and batch_ids[position] in accepted_ids:
                assert args["reason"] == selectors["RedemptionIdUsed"]
            elif expected == "any":
                assert name == "RedemptionRejected"
            if name == "Redeemed":
                accepted_ids.add(args["redemptionId"])
        recorded = result.named("ReceiptsRecorded")
        assert [e.args["count"] for e in recorded] == ([len(accepted_ids)] if accepted_ids else [])
        for rid in accepted_ids:
            self.redemptions.append((rid, result.events))

    @rule(choice=st.integers(0, 10**6), caller=st.sampled_from(["own", "own", "issuer", "other"]))
    def reverse(self, choice: int, caller: str) -> None:
        if not self.redemptions:
            return
        rid, events = self.redemptions[choice % len(self.redemptions)]
        receipt, root, proof = self.env.client.reversal_proof(events, rid)
        own = next(m for m in self.merchants if m.address == receipt.merchant)
        other = next(m for m in self.merchants if m.address != receipt.merchant)
        account = {"own": own, "issuer": self.env.issuer, "other": other}[caller]
        result = self._transact(
            account, "reverse", receipt.as_tuple(), root, proof, allowed=(errors.ReversalRefused,)
        )
        if caller == "other":
            assert isinstance(result, errors.ReversalNotMerchant), result

    @rule(merchant=st.integers(0, 1), percent=st.integers(0, 110))
    def settle(self, merchant: int, percent: int) -> None:
        account = self.merchants[merchant]
        owed = self.env.client.merchant_totals(account.address).owed
        amount = owed * percent // 100 + (1 if percent > 100 else 0)
        self.references += 1
        reference = self.references.to_bytes(32, "big")
        result = self._transact(
            self.env.settler,
            "settle",
            account.address,
            amount,
            reference,
            allowed=(errors.SettlementRefused,),
        )
        if amount == 0:
            assert isinstance(result, errors.SettlementAmountZero), result
        elif amount > owed:
            assert isinstance(result, errors.SettlementExceedsOwed), result
        else:
            assert isinstance(result, TxResult), result

    @rule(seconds=st.sampled_from([60, 1_800, 3_700]))
    def advance_time(self, seconds: int) -> None:
        _rpc(self.env, "evm_increaseTime", [seconds])
        _rpc(self.env, "evm_mine", [])

    @rule(scheme=st.sampled_from([1, 1, 1, 0, 2]))
    def expire(self, scheme: int) -> None:
        scheme_id = self.schemes[scheme]
        if scheme_id == self.base.uses:
            valid_until = self.env.client.scheme_of(scheme_id).terms.valid_until
            if self.env.now() <= valid_until:
                _rpc(self.env, "evm_increaseTime", [valid_until - self.env.now() + 1])
                _rpc(self.env, "evm_mine", [])
        result = self._transact(
            self.env.issuer,
            "expire",
            scheme_id,
            self.base.passes,
            allowed=(errors.SchemeStillValid,),
        )
        if scheme_id == self.base.uses:
            assert isinstance(result, TxResult)
            assert all(self.env.client.balance_of(scheme_id, p) == 0 for p in self.base.passes)
        else:
            assert isinstance(result, errors.SchemeStillValid)

    # ------------------------------------------------------------ invariants

    @invariant()
    def accounts_balance(self) -> None:
        passes = self.base.passes
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("balanceOf", (s, p)) for s in self.schemes for p in passes
        ]
        calls += [("schemeOf", (s,)) for s in self.schemes]
        calls += [("merchantAccount", (m.address,)) for m in self.merchants]
        results = self.reader.calls(calls)
        balances = [r[0] for r in results[: len(self.schemes) * len(passes)]]
        scheme_states = results[len(balances) : len(balances) + len(self.schemes)]
        accounts = results[len(balances) + len(self.schemes) :]

        for position, scheme in enumerate(self.schemes):
            remaining = sum(balances[position * len(passes) : (position + 1) * len(passes)])
            assert self.issued[scheme] == (
                remaining + self.debited[scheme] - self.restored[scheme] + self.expired[scheme]
            ), (scheme, self.base.kinds[scheme])
            terms, committed = scheme_states[position]
            kind = self.base.kinds[scheme]
            if kind is SchemeKind.BUDGET:
                assert committed == self.issued[scheme]
            elif kind is SchemeKind.USES:
                assert committed == self.issued[scheme] * UNIT_VALUE
            else:
                assert committed == self.scheme_credited[scheme] - self.scheme_uncredited[scheme]
            assert committed <= terms[8]  # budgetCap

        for merchant, (redeemed, reversed_, settled) in zip(self.merchants, accounts, strict=True):
            address = merchant.address
            assert (redeemed, reversed_, settled) == (
                self.redeemed[address],
                self.reversed[address],
                self.settled[address],
            )
            assert settled <= redeemed - reversed_
            assert reversed_ <= redeemed


def _base(env: LedgerEnv) -> Base:
    now = env.now()
    budget = env.new_scheme(SchemeKind.BUDGET, budget_cap=60_000)
    uses = env.new_scheme(
        SchemeKind.USES,
        unit_value=UNIT_VALUE,
        budget_cap=60 * UNIT_VALUE,
        valid_until=now + 2 * DAY,
        open_to_all_merchants=False,
    )
    env.client.transact(env.issuer, "setMerchantAllowed", uses, env.merchant.address, True)
    discount = env.new_scheme(
        SchemeKind.DISCOUNT,
        discount_bps=DISCOUNT_BPS,
        reimburse_bps=REIMBURSE_BPS,
        per_redemption_cap=DISCOUNT_CAP,
        budget_cap=1_500,
    )
    passes = [
        env.new_pass(holder_key=env.holder.address if i == 0 else None) for i in range(PASSES)
    ]
    kinds = {budget: SchemeKind.BUDGET, uses: SchemeKind.USES, discount: SchemeKind.DISCOUNT}
    events: list[DecodedEvent] = []
    for scheme, amount in ((budget, 5_000), (uses, 5), (discount, 3)):
        result = env.client.transact(env.issuer, "issueBatch", scheme, passes, [amount] * PASSES)
        events += result.events
    return Base(budget, uses, discount, passes, kinds, events)


def test_ledger_accounting_invariants(deployed: LedgerEnv) -> None:
    outer = _rpc(deployed, "evm_snapshot", [])
    try:
        LedgerMachine.env = deployed
        LedgerMachine.base = _base(deployed)
        LedgerMachine.reader = Reader(deployed)
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=15,
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        assert _rpc(deployed, "evm_revert", [outer])
