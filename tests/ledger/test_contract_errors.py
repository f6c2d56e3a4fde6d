"""`ledger.contract_errors` against the compiled ABI: one typed exception per custom error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import contract_errors as errors
from ledger.compiler import Artifacts

# Declared by OpenZeppelin's ShortStrings (used by EIP712's constructor) and so present in the ABI,
# although the deployed ledger cannot revert with them.
SHORT_STRINGS_ERRORS = {"InvalidShortString", "StringTooLong"}

FAMILIES: dict[str, type[errors.ContractRevert]] = {
    "AccessControl": errors.AccessRefused,
    "Entitlement": errors.IssuanceRefused,
    "EnforcedPause": errors.PausedRefused,
    "ExpectedPause": errors.PausedRefused,
    "Pass": errors.PassRefused,
    "CardSerial": errors.PassRefused,
    "SchemeTerms": errors.SchemeRefused,
    "SchemeUnknown": errors.SchemeRefused,
    "SchemeEnded": errors.SchemeRefused,
    "SchemeStillValid": errors.SchemeRefused,
    "SchemeBudget": errors.IssuanceRefused,
    "Issuance": errors.IssuanceRefused,
    "Cohort": errors.IssuanceRefused,
    "Redemption": errors.RedemptionRefused,
    "Reversal": errors.ReversalRefused,
    "Settlement": errors.SettlementRefused,
}


@pytest.fixture(scope="module")
def abi(artifacts: Artifacts) -> list[dict[str, Any]]:
    return [dict(item) for item in artifacts.get("StadjerspasLedger").abi]


def _abi_errors(abi: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(item["name"]): item for item in abi if item["type"] == "error"}


def _sample(abi_type: str, position: int) -> Any:
    if abi_type == "address":
        return "0x" + f"{position + 1:040x}"
    if abi_type == "bool":
        return position % 2 == 0
    if abi_type == "string":
        return f"reason {position}"
    if abi_type.startswith("bytes"):
        return bytes([position + 1]) * int(abi_type[5:])
    bits = int(abi_type.removeprefix("uint") or 256)
    return (2**bits - 1) - position  # the largest values, to catch narrowing


def test_every_class_is_an_error_of_the_abi(abi: list[dict[str, Any]]) -> None:
    missing = set(errors.error_classes()) - set(_abi_errors(abi))
    assert not missing, f"classes for errors the contract does not have: {sorted(missing)}"


def test_every_ledger_error_of_the_abi_has_a_class(abi: list[dict[str, Any]]) -> None:
    missing = set(_abi_errors(abi)) - SHORT_STRINGS_ERRORS - set(errors.error_classes())
    assert not missing, f"add classes to ledger/contract_errors.py for: {sorted(missing)}"


def test_every_error_of_the_abi_has_a_class(abi: list[dict[str, Any]]) -> None:
    assert set(_abi_errors(abi)) == set(errors.error_classes())


def test_codes_and_names_are_unique_and_stable() -> None:
    classes = errors.error_classes()
    codes = [cls.code for cls in classes.values()]
    assert len(codes) == len(set(codes))
    for name, cls in classes.items():
        assert cls.error_name == name
        assert cls.code == errors._snake(name)
        assert cls.rule
        assert cls.rule != errors.ContractRevert.rule
    assert classes["RedemptionIdUsed"].code == "redemption_id_used"
    assert classes["AccessControlUnauthorizedAccount"].code == "access_control_unauthorized_account"


def test_every_error_class_is_raised_by_a_contract_test() -> None:
    """Each rule is exercised on the real contract through its typed exception somewhere."""
    here = Path(__file__).resolve().parent
    sources = "\n".join(
        path.read_text("utf-8")
        for path in sorted(here.glob("test_*.py"))
        if path.name != Path(__file__).name
    )
    unexercised = [
        name
        for name in errors.error_classes()
        if f"errors.{name}" not in sources and name not in SHORT_STRINGS_ERRORS
    ]
    assert not unexercised, f"no contract test raises: {unexercised}"


def test_every_class_belongs_to_its_family() -> None:
    for name, cls in errors.error_classes().items():
        if name in SHORT_STRINGS_ERRORS:
            continue
        family = next(v for k, v in FAMILIES.items() if name.startswith(k))
        assert issubclass(cls, family), (name, family)


def test_every_abi_error_decodes_to_its_class_with_its_values(abi: list[dict[str, Any]]) -> None:
    classes = errors.error_classes()
    for name, item in _abi_errors(abi).items():
        if name in SHORT_STRINGS_ERRORS:
            continue
        types = [str(arg["type"]) for arg in item["inputs"]]
        values = [_sample(t, i) for i, t in enumerate(types)]
        selector = function_signature_to_4byte_selector(f"{name}({','.join(types)})")

        decoded = errors.decode_revert(selector + encode(types, values), abi)

        assert type(decoded) is classes[name]
        names = [str(arg["name"]) for arg in item["inputs"]]
        shown = [
            to_checksum_address(v) if t == "address" else v
            for t, v in zip(types, values, strict=True)
        ]
        assert decoded.values == dict(zip(names, shown, strict=True))
        assert str(decoded).startswith(f"{name}(")


def test_redemption_errors_all_take_the_id_and_one_word(abi: list[dict[str, Any]]) -> None:
    """So that `RedemptionRejected(id, selector, detail)` can report each of them in a batch."""
    redemption = {k: v for k, v in _abi_errors(abi).items() if k.startswith("Redemption")}
    assert len(redemption) == 18
    for name, item in redemption.items():
        inputs = item["inputs"]
        assert len(inputs) == 2, name
        assert (inputs[0]["name"], inputs[0]["type"]) == ("redemptionId", "uint256"), name
        assert inputs[1]["type"] in {"uint256", "bytes32", "address"}, name


GARBAGE = [
    b"",
    b"\x00",
    b"\x12\x34\x56",
    b"\xde\xad\xbe\xef",
    b"\xde\xad\xbe\xef" + bytes(64),
    function_signature_to_4byte_selector("RedemptionIdUsed(uint256,uint256)") + bytes(32),
    function_signature_to_4byte_selector("SchemeTermsInvalid(string)") + b"\x01" * 40,
    function_signature_to_4byte_selector("Error(string)") + b"\xff" * 3,
    function_signature_to_4byte_selector("Panic(uint256)") + bytes(31),
]


@pytest.mark.parametrize("data", GARBAGE, ids=[d.hex() or "empty" for d in GARBAGE])
def test_garbage_revert_data_is_unknown_revert(abi: list[dict[str, Any]], data: bytes) -> None:
    decoded = errors.decode_revert(data, abi)
    assert type(decoded) is errors.UnknownRevert
    assert decoded.values == {"data": data}
    assert decoded.code == "unknown_revert"


def test_panic_and_error_string_decode(abi: list[dict[str, Any]]) -> None:
    panic = errors.decode_revert(
        function_signature_to_4byte_selector("Panic(uint256)") + (0x11).to_bytes(32, "big"), abi
    )
    assert type(panic) is errors.ContractPanic
    assert panic.values == {"code": 0x11}
    message = errors.decode_revert(
        function_signature_to_4byte_selector("Error(string)") + encode(["string"], ["nope"]), abi
    )
    assert type(message) is errors.ContractRevertMessage
    assert message.values == {"message": "nope"}


def test_generic_classes_are_not_contract_errors() -> None:
    classes = errors.error_classes()
    for generic in ("Panic", "Error", "UnknownRevert", "ContractRevert"):
        assert generic not in classes


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_decode_revert_never_raises(abi: list[dict[str, Any]], data: bytes) -> None:
    decoded = errors.decode_revert(data, abi)
    assert isinstance(decoded, errors.ContractRevert)
    assert isinstance(str(decoded), str)
