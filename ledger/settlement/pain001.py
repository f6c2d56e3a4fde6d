"""ISO 20022 SEPA credit transfers (pain.001.001.03 / .09) made with ``sepaxml``.

``sepaxml`` validates the document against the XSD it ships (offline) when exporting;
:func:`validate` runs the same check on any document (for tests and for files read back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import sepaxml
import xmlschema
from sepaxml import SepaTransfer

from ledger.settlement.config import DebtorAccount
from ledger.settlement.errors import SettlementError

__all__ = ["Transfer", "build_document", "schema_path", "validate"]


@dataclass(frozen=True, slots=True)
class Transfer:
    name: str
    iban: str
    bic: str | None
    amount: int  # cents, > 0
    end_to_end_id: str  # <= 35 characters
    remittance: str  # <= 140 characters


def schema_path(schema: str) -> Path:
    """The XSD of ``schema`` that sepaxml ships."""
    return Path(sepaxml.__file__).resolve().parent / "schemas" / f"{schema}.xsd"


def build_document(
    *,
    debtor: DebtorAccount,
    schema: str,
    message_id: str,
    execution_date: date,
    transfers: Sequence[Transfer],
) -> bytes:
    """One batch (one ``PmtInf``) with a transaction per transfer; validated against the XSD."""
    if not transfers:
        raise SettlementError("a credit-transfer file needs at least one transfer")
    if len(message_id) > 35:
        raise SettlementError("the batch reference (MsgId) is limited to 35 characters")
    config: dict[str, Any] = {
        "name": debtor.name,
        "IBAN": debtor.iban,
        "batch": True,
        "currency": debtor.currency,
    }
    if debtor.bic:
        config["BIC"] = debtor.bic
    sepa = SepaTransfer(config, schema=schema, clean=True)
    sepa.msg_id = message_id
    header = sepa._xml.find("CstmrCdtTrfInitn/GrpHdr/MsgId")
    if header is None:
        raise SettlementError("sepaxml produced no group header")
    header.text = message_id
    for transfer in transfers:
        if transfer.amount <= 0 or len(transfer.end_to_end_id) > 35:
            raise SettlementError(f"invalid transfer {transfer.end_to_end_id!r}")
        payment: dict[str, Any] = {
            "name": transfer.name,
            "IBAN": transfer.iban,
            "amount": int(transfer.amount),
            "execution_date": execution_date,
            "description": transfer.remittance,
            "endtoend_id": transfer.end_to_end_id,
        }
        if transfer.bic:
            payment["BIC"] = transfer.bic
        sepa.add_payment(payment)
    try:
        document: bytes = sepa.export(validate=True)
    except sepaxml.validation.ValidationError as exc:
        raise SettlementError(f"the credit-transfer file does not validate: {exc}") from exc
    # the payment-information id is random in sepaxml: make it ours (deterministic per run)
    return _with_payment_info_id(document, schema, message_id)


def _with_payment_info_id(document: bytes, schema: str, message_id: str) -> bytes:
    namespace = f"urn:iso:std:iso:20022:tech:xsd:{schema}"
    ElementTree.register_namespace("", namespace)
    root = ElementTree.fromstring(document)  # noqa: S314 - our own output
    for number, node in enumerate(root.iter(f"{{{namespace}}}PmtInfId"), start=1):
        node.text = f"{message_id}-B{number}"[:35]
    out: bytes = b'<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(root, "utf-8")
    validate(out, schema)
    return out


def validate(document: bytes, schema: str) -> None:
    """Raise :class:`SettlementError` unless ``document`` is valid against the XSD."""
    xsd = xmlschema.XMLSchema(str(schema_path(schema)))
    errors = list(xsd.iter_errors(document.decode("utf-8")))
    if errors:
        raise SettlementError(f"invalid {schema} document: {errors[0].reason}")
