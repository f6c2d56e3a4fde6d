"""Typed Python exceptions for every custom error the ledger contract can revert with.

Each Solidity error ``Name(args)`` maps to a class here with a stable ``code`` (snake case of the
name) and the rule it enforces. :func:`decode_revert` turns revert data into an instance whose
message quotes the values. ``tests/ledger/test_contract_errors.py`` fails when the contract gains
an error without a class here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from eth_abi import decode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address

from ledger.errors import ChainError

__all__ = ["ContractRevert", "decode_revert", "error_classes", "error_selectors"]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class ContractRevert(ChainError):
    """The contract refused a call. ``code`` is stable; ``values`` holds the error's arguments."""

    rule: ClassVar[str] = "the contract refused the call"
    code: ClassVar[str] = "contract_revert"
    error_name: ClassVar[str] = ""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})
        shown = ", ".join(f"{key}={_show(value)}" for key, value in self.values.items())
        super().__init__(f"{self.error_name or type(self).__name__}({shown}): {self.rule}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "error_name" not in cls.__dict__:
            cls.error_name = cls.__name__
        if "code" not in cls.__dict__:
            cls.code = _snake(cls.__name__)


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return repr(value) if isinstance(value, str) else str(value)


# ---------------------------------------------------------------- families


class AccessRefused(ContractRevert):
    rule = "the caller lacks the role this call needs"


class PausedRefused(ContractRevert):
    rule = "the ledger is paused"


class PassRefused(ContractRevert):
    rule = "the pass operation is not allowed"


class SchemeRefused(ContractRevert):
    rule = "the scheme operation is not allowed"


class IssuanceRefused(ContractRevert):
    rule = "the issuance is not allowed"


class RedemptionRefused(ContractRevert):
    rule = "the redemption is refused"


class ReversalRefused(ContractRevert):
    rule = "the reversal is refused"


class SettlementRefused(ContractRevert):
    rule = "the settlement is refused"


class UnknownRevert(ContractRevert):
    rule = "the contract reverted with data this client does not know"


class ContractPanic(ContractRevert):
    error_name = "Panic"
    rule = "the contract hit an internal assertion (a bug): report it"


class ContractRevertMessage(ContractRevert):
    error_name = "Error"
    rule = "the contract reverted with a message"


# ---------------------------------------------------------------- OpenZeppelin


class AccessControlUnauthorizedAccount(AccessRefused):
    rule = "the account does not hold the role this call needs"


class AccessControlBadConfirmation(AccessRefused):
    rule = "an account may only renounce roles for itself"


class EnforcedPause(PausedRefused):
    rule = "the ledger is paused; no state change is accepted until it is unpaused"


class ExpectedPause(PausedRefused):
    rule = "the ledger is not paused"


# ---------------------------------------------------------------- passes


class PassAlreadyRegistered(PassRefused):
    rule = "a pass id can be registered once"


class PassUnknown(PassRefused):
    rule = "the pass id is not registered"


class PassBlockStatusUnchanged(PassRefused):
    rule = "the pass is already in that block status"


class CardSerialInvalid(PassRefused):
    rule = "a card serial must differ from the current one and not exceed 2**63 - 1"


class PassesLengthMismatch(PassRefused):
    rule = "a batch of passes needs no card serials or one card serial per pass id"


# ---------------------------------------------------------------- schemes and issuance


class SchemeTermsInvalid(SchemeRefused):
    rule = "the scheme terms are inconsistent"


class SchemeUnknown(SchemeRefused):
    rule = "no scheme has this id"


class SchemeEnded(SchemeRefused):
    rule = "the scheme's validity has ended"


class SchemeStillValid(SchemeRefused):
    rule = "entitlements expire only after the scheme's validity ends"


class SchemeBudgetExceeded(IssuanceRefused):
    rule = "issued value may never exceed the scheme's budget cap"


class IssuanceAmountZero(IssuanceRefused):
    rule = "an issuance must add a positive amount"


class IssuanceLengthMismatch(IssuanceRefused):
    rule = "a batch needs one amount per pass id"


class CohortExists(IssuanceRefused):
    rule = "a cohort root can be issued once"


class CohortUnknown(IssuanceRefused):
    rule = "no cohort was issued with this root"


class CohortAlreadyClaimed(IssuanceRefused):
    rule = "a cohort leaf can be claimed once"


class CohortProofInvalid(IssuanceRefused):
    rule = "the Merkle proof does not prove this leaf under the cohort root"


class CohortTotalExceeded(IssuanceRefused):
    rule = "claims of a cohort may never credit more than the total it committed"


class EntitlementOverflow(IssuanceRefused):
    rule = "a Budget or Uses balance may not exceed MAX_AMOUNT (2**63 - 1)"


class InvalidShortString(ContractRevert):
    rule = "OpenZeppelin ShortStrings: invalid short string (construction only)"


class StringTooLong(ContractRevert):
    rule = "OpenZeppelin ShortStrings: string too long (construction only)"


# ---------------------------------------------------------------- redemption


class RedemptionIdUsed(RedemptionRefused):
    rule = "a redemption id can be used once"


class RedemptionSchemeUnknown(RedemptionRefused):
    rule = "no scheme has this id"


class RedemptionSchemeNotStarted(RedemptionRefused):
    rule = "the scheme is not valid yet"


class RedemptionSchemeEnded(RedemptionRefused):
    rule = "the scheme's validity has ended"


class RedemptionMerchantNotAllowed(RedemptionRefused):
    rule = "this merchant may not redeem this scheme"


class RedemptionPassUnknown(RedemptionRefused):
    rule = "the pass id is not registered"


class RedemptionPassBlocked(RedemptionRefused):
    rule = "the pass is blocked"


class RedemptionTokenExpired(RedemptionRefused):
    rule = "the pass token has expired"


class RedemptionCardRevoked(RedemptionRefused):
    rule = "the card serial was revoked (the card was replaced)"


class RedemptionAmountZero(RedemptionRefused):
    rule = "a redemption must be for a positive amount"


class RedemptionAmountOverTokenCap(RedemptionRefused):
    rule = "the amount exceeds the cap in the pass token"


class RedemptionCardUncapped(RedemptionRefused):
    rule = "a printed-card token must carry an amount cap (what a card moves without the PIN)"


class RedemptionTokenUsed(RedemptionRefused):
    rule = (
        "a short-lived pass token serves one checkout: it was redeemed by another merchant, "
        "or a newer token of the pass was"
    )


class RedemptionAmountOverSchemeCap(RedemptionRefused):
    rule = "the amount exceeds the scheme's per-redemption cap"


class RedemptionAmountOverBalance(RedemptionRefused):
    rule = "the amount exceeds what is left of the entitlement"


class RedemptionBudgetExhausted(RedemptionRefused):
    rule = "the scheme's budget cannot reimburse this discount"


class RedemptionSignatureInvalid(RedemptionRefused):
    rule = "the pass token signature is malformed"


class RedemptionSignerNotAllowed(RedemptionRefused):
    rule = (
        "the pass token was not signed by the holder key or a pass signer "
        "for this chain and contract"
    )


# ---------------------------------------------------------------- reversal and settlement


class ReversalUnknownRedemption(ReversalRefused):
    rule = "no redemption has this id"


class ReversalAlreadyDone(ReversalRefused):
    rule = "a redemption can be reversed once"


class ReversalReceiptInvalid(ReversalRefused):
    rule = "the receipt and proof do not match a recorded receipt root"


class ReversalWindowClosed(ReversalRefused):
    rule = "the reversal window has closed"


class ReversalNotMerchant(ReversalRefused):
    rule = "only the redeeming merchant or an issuer may reverse"


class ReversalExceedsOwed(ReversalRefused):
    rule = "the merchant was already paid for this redemption; reverse it through settlement"


class SettlementAmountZero(SettlementRefused):
    rule = "a settlement must be for a positive amount"


class SettlementExceedsOwed(SettlementRefused):
    rule = "a settlement may not exceed redeemed minus reversed minus already settled"


class SettlementReferenceUsed(SettlementRefused):
    rule = "a payment reference can be settled once per merchant"


def _leaf_classes(root: type[ContractRevert]) -> dict[str, type[ContractRevert]]:
    found: dict[str, type[ContractRevert]] = {}
    for sub in root.__subclasses__():
        if sub.__subclasses__():
            found.update(_leaf_classes(sub))
        else:
            found[sub.error_name] = sub
    return found


def error_classes() -> dict[str, type[ContractRevert]]:
    """Every concrete error class by its Solidity name."""
    classes = _leaf_classes(ContractRevert)
    for generic in ("Panic", "Error", "UnknownRevert"):
        classes.pop(generic, None)
    return classes


def error_selectors(
    abi: Sequence[Mapping[str, Any]],
) -> dict[bytes, tuple[str, list[str], list[str]]]:
    """Selector -> (name, argument types, argument names) for the errors in ``abi``."""
    selectors: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        types = [str(arg["type"]) for arg in item["inputs"]]
        names = [str(arg["name"]) or f"arg{i}" for i, arg in enumerate(item["inputs"])]
        signature = f"{item['name']}({','.join(types)})"
        selectors[function_signature_to_4byte_selector(signature)] = (
            str(item["name"]),
            types,
            names,
        )
    return selectors


_PANIC = function_signature_to_4byte_selector("Panic(uint256)")
_ERROR = function_signature_to_4byte_selector("Error(string)")


def decode_revert(data: bytes, abi: Sequence[Mapping[str, Any]]) -> ContractRevert:
    """The typed exception for revert ``data`` of a call to a contract with ``abi``."""
    selector, body = data[:4], data[4:]
    if selector == _PANIC and len(body) == 32:
        return ContractPanic({"code": int.from_bytes(body, "big")})
    if selector == _ERROR:
        try:
            (message,) = decode(["string"], body)
        except Exception:
            return UnknownRevert({"data": data})
        return ContractRevertMessage({"message": message})
    known = error_selectors(abi).get(selector)
    if known is None:
        return UnknownRevert({"data": data})
    name, types, names = known
    try:
        values = decode(types, body)
    except Exception:
        return UnknownRevert({"data": data})
    shown = {
        arg_name: to_checksum_address(value) if arg_type == "address" else value
        for arg_name, arg_type, value in zip(names, types, values, strict=True)
    }
    cls = error_classes().get(name, UnknownRevert)
    return cls(shown)
