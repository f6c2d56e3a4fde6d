"""What the admin registry routes do: holders, passes, cards, schemes, CSV and cohort issuance.

Synchronous (FastAPI runs them in its thread pool). Registry writes that go with a chain write
run inside one registry transaction around the transaction's receipt, so a chain refusal
rolls the registry back: nothing changes on refusal. Registry errors become problems with
stable codes (:func:`registry_errors`); the contract's typed errors and ledger errors are
answered by the problem handlers.

Long work (CSV issuance in chunks of :data:`BATCH_SIZE`, cohorts) runs as a job
(:mod:`api.jobs`); everything that can be checked is checked before the job is queued.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from eth_utils import to_checksum_address
from PIL import Image, ImageDraw, ImageFont
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from api import cohort_claims
from api.admin_schemas import (
    AuditIn,
    AuditOut,
    CardOut,
    CohortIn,
    ConfirmOut,
    DifferenceOut,
    ErasureOut,
    HolderIn,
    HolderOut,
    HouseholdIn,
    HouseholdMemberIn,
    HouseholdMemberOut,
    HouseholdOut,
    HouseholdPage,
    IssuedPassOut,
    MerchantIn,
    MerchantLocationIn,
    MerchantLocationOut,
    MerchantOut,
    PassIn,
    PassOut,
    PassSummary,
    PayoutIn,
    PayoutLineOut,
    PayoutRunOut,
    SchemeIn,
    SchemeOut,
)
from api.audit_promises import load_promises
from api.jobs import Job, Progress, jobs_of
from api.partners import enrol_partner
from api.problems import ApiProblem
from api.runtime import Runtime, gas_limit
from ledger import activation
from ledger import registry as reg
from ledger.audit import AuditError, audit
from ledger.client import ROLES, SchemeKind, SchemeState, SchemeTerms
from ledger.merkle import CohortLeaf, MerkleTree, cohort_leaf_hash
from ledger.relayer import TxHandle, TxReceipt, TxRequest
from ledger.reports.periods import Period, PeriodError
from ledger.settlement import (
    ClientSettlementChain,
    DebtorAccount,
    DebtorAccountInvalid,
    OverlappingSettledPeriod,
    PayoutConfig,
    RunLine,
    RunNotFound,
    RunStateError,
    SettlementError,
    confirm_run,
    create_run,
    run_lines,
)
from ledger.store.registry import (
    CardStatus,
    Holder,
    Household,
    PassRecord,
    PassStatus,
    PrintedCard,
)
from ledger.store.registry import Merchant as MerchantRow
from wallet import Amount, PassToken, encode_token_uri, sign_pass_token
from wallet.qr import DEFAULT_BORDER, qr_matrix, render_png

__all__ = [
    "BATCH_SIZE",
    "CARD_LIFETIME",
    "MAX_CSV_BYTES",
    "block_pass",
    "card_pdf",
    "card_png",
    "confirm_payout",
    "create_household",
    "create_payout",
    "create_scheme",
    "delete_household",
    "draw_qr",
    "enrol_holder",
    "erase_holder",
    "get_holder",
    "get_household",
    "get_payout",
    "issue_card",
    "issue_pass",
    "link_member",
    "list_households",
    "list_merchants",
    "list_schemes",
    "payout_document",
    "register_merchant",
    "registry_errors",
    "run_audit",
    "set_merchant_location",
    "start_cohort",
    "start_csv_issuance",
    "unlink_member",
]

log = logging.getLogger(__name__)

#: Passes per ``issueBatch`` transaction.
BATCH_SIZE: Final = 100
#: A printed card's token is valid this long (revoked earlier by replacing the card).
CARD_LIFETIME: Final = timedelta(days=5 * 365)
#: Largest CSV upload accepted.
MAX_CSV_BYTES: Final = 5 * 1024 * 1024
#: Most lines in one CSV.
MAX_CSV_LINES: Final = 100_000
_UINT64: Final = 2**64 - 1
_ZERO_ADDRESS: Final = "0x" + "00" * 20
_KIND: Final = {
    "budget": SchemeKind.BUDGET,
    "uses": SchemeKind.USES,
    "discount": SchemeKind.DISCOUNT,
}
_KIND_NAME: Final = {v: k for k, v in _KIND.items()}

_REGISTRY_PROBLEMS: Final[list[tuple[type[reg.RegistryError], int, str]]] = [
    (reg.UnknownHolder, 404, "holder_unknown"),
    (reg.UnknownHousehold, 404, "household_unknown"),
    (reg.UnknownHouseholdMember, 404, "household_member_unknown"),
    (reg.UnknownPass, 404, "pass_number_unknown"),
    (reg.UnknownMerchant, 404, "merchant_unknown"),
    (reg.UnknownPostcode, 422, "postcode_unknown"),
    (reg.InvalidPostcode, 422, "postcode_invalid"),
    (reg.UnknownDistrict, 422, "district_unknown"),
    (reg.InvalidHousehold, 422, "household_invalid"),
    (reg.InvalidHolder, 422, "holder_invalid"),
    (reg.InvalidPassNumber, 422, "pass_number_invalid"),
    (reg.InvalidAddress, 422, "address_invalid"),
    (reg.InvalidIban, 422, "iban_invalid"),
    (reg.InvalidKvk, 422, "kvk_invalid"),
    (reg.InvalidLocation, 422, "location_invalid"),
    (reg.InvalidMerchant, 422, "merchant_invalid"),
    (reg.PassBlocked, 409, "pass_blocked"),
    (reg.DuplicatePassNumber, 409, "pass_number_taken"),
    (reg.DuplicateMerchant, 409, "merchant_duplicate"),
    (reg.DuplicateHousehold, 409, "household_reference_taken"),
    (reg.HouseholdNotEmpty, 409, "household_not_empty"),
    (reg.HolderInOtherHousehold, 409, "holder_in_other_household"),
]


@contextmanager
def registry_errors() -> Iterator[None]:
    """Turn the registry's errors into problems with stable codes."""
    try:
        yield
    except reg.RegistryError as exc:
        for cls, status, code in _REGISTRY_PROBLEMS:
            if isinstance(exc, cls):
                raise ApiProblem(status, code, str(exc)) from None
        raise ApiProblem(422, "registry_refused", str(exc)) from None


def _transact(runtime: Runtime, function: str, *args: Any) -> TxReceipt:
    """One call from the issuer account, through its relayer and the outbox
    (:meth:`Runtime.transact`)."""
    return runtime.transact(runtime.issuer(), function, *args)


def _pid(record: PassRecord) -> bytes:
    return bytes.fromhex(record.pass_id.removeprefix("0x"))


# -- holders ----------------------------------------------------------------------------------


def _holder_out(runtime: Runtime, holder: Holder, *, with_passes: bool) -> HolderOut:
    assert holder.id is not None
    registry = runtime.store.registry
    reference: str | None = None
    if holder.household_id is not None:
        with runtime.store.session() as session:
            household = session.get(Household, holder.household_id)
            reference = household.reference if household is not None else None
    passes: list[PassSummary] = []
    if with_passes:
        for record in registry.passes_of(holder.id):
            card = registry.active_card(record.pass_number)
            passes.append(
                PassSummary(
                    pass_number=record.pass_number,
                    status="blocked" if record.status is PassStatus.BLOCKED else "active",
                    created_at=record.created_at,
                    card_serial=card.serial if card is not None else None,
                )
            )
    return HolderOut(
        id=holder.id,
        first_name=holder.first_name,
        last_name=holder.last_name,
        birth_date=holder.birth_date,
        postcode=holder.postcode,
        district_code=holder.district_code,
        household_id=holder.household_id,
        household_reference=reference,
        household_role=str(holder.household_role),
        possible_duplicate=holder.possible_duplicate_of is not None,
        possible_duplicate_of=holder.possible_duplicate_of,
        created_at=holder.created_at,
        passes=passes,
        street=holder.street,
        town=holder.town,
    )


def enrol_holder(runtime: Runtime, body: HolderIn) -> HolderOut:
    """Enrol the holder; with ``street`` and ``town`` also their postal address (both or
    neither, checked before anything is stored)."""
    if (body.street is None) != (body.town is None):
        raise ApiProblem(
            422,
            "holder_invalid",
            "street and town make a postal address together: give both or neither",
        )
    with registry_errors():
        if body.street is not None and body.town is not None:
            activation.check_address(street=body.street, town=body.town)
        holder = runtime.store.registry.enrol_holder(
            first_name=body.first_name,
            last_name=body.last_name,
            birth_date=body.birth_date,
            postcode=body.postcode,
            household_reference=body.household_reference,
            household_role=body.household_role,
        )
        if body.street is not None and body.town is not None:
            assert holder.id is not None
            holder = activation.set_address(
                runtime.store.registry, holder.id, street=body.street, town=body.town
            )
    return _holder_out(runtime, holder, with_passes=False)


def get_holder(runtime: Runtime, holder_id: int) -> HolderOut:
    with registry_errors():
        holder = runtime.store.registry.holder(holder_id)
    return _holder_out(runtime, holder, with_passes=True)


def erase_holder(runtime: Runtime, holder_id: int) -> ErasureOut:
    """GDPR erasure: the registry forgets the person and the pass secrets, which unlinks the
    on-chain history (pseudonymous pass ids) from them."""
    with registry_errors():
        erasure = runtime.store.registry.erase_holder(holder_id)
    return ErasureOut(
        holder_id=erasure.holder_id,
        passes=erasure.passes,
        cards=erasure.cards,
        household_removed=erasure.household_removed,
    )


# -- households -------------------------------------------------------------------------------


def _households_out(runtime: Runtime, households: list[Household]) -> list[HouseholdOut]:
    ids = [h.id for h in households if h.id is not None]
    members = runtime.store.registry.members_of_households(ids)
    out: list[HouseholdOut] = []
    for household in households:
        assert household.id is not None
        out.append(
            HouseholdOut(
                id=household.id,
                reference=household.reference,
                members=[
                    HouseholdMemberOut(
                        holder_id=member.holder.id or 0,
                        first_name=member.holder.first_name,
                        role=member.holder.household_role.value,
                        pass_numbers=member.pass_numbers,
                    )
                    for member in members[household.id]
                ],
            )
        )
    return out


def list_households(runtime: Runtime, *, limit: int, offset: int) -> HouseholdPage:
    registry = runtime.store.registry
    with registry.transaction():  # one snapshot: the count and the page agree
        total = registry.household_count()
        page = _households_out(runtime, registry.households(limit=limit, offset=offset))
    return HouseholdPage(total=total, limit=limit, offset=offset, households=page)


def get_household(runtime: Runtime, household_id: int) -> HouseholdOut:
    registry = runtime.store.registry
    with registry_errors(), registry.transaction():
        return _households_out(runtime, [registry.household(household_id)])[0]


def create_household(runtime: Runtime, body: HouseholdIn) -> HouseholdOut:
    registry = runtime.store.registry
    with registry_errors(), registry.transaction():
        household = registry.create_household(body.reference)
        return _households_out(runtime, [household])[0]


def delete_household(runtime: Runtime, household_id: int) -> None:
    with registry_errors():
        runtime.store.registry.delete_household(household_id)


def link_member(
    runtime: Runtime, household_id: int, holder_id: int, body: HouseholdMemberIn
) -> HouseholdOut:
    """Link a holder to the household with a role (or change their role there)."""
    registry = runtime.store.registry
    with registry_errors(), registry.transaction():
        registry.link_holder(household_id, holder_id, body.role)
        return _households_out(runtime, [registry.household(household_id)])[0]


def unlink_member(runtime: Runtime, household_id: int, holder_id: int) -> HouseholdOut:
    registry = runtime.store.registry
    with registry_errors(), registry.transaction():
        registry.unlink_holder(household_id, holder_id)
        return _households_out(runtime, [registry.household(household_id)])[0]


# -- passes and cards -------------------------------------------------------------------------


def issue_pass(runtime: Runtime, holder_id: int, body: PassIn) -> IssuedPassOut:
    """A new pass in the registry and ``registerPass`` on chain, in one registry transaction."""
    registry = runtime.store.registry
    with registry_errors(), registry.transaction():
        issued = registry.issue_pass(holder_id, holder_key=body.holder_key)
        receipt = _transact(
            runtime, "registerPass", issued.pass_id, body.holder_key or _ZERO_ADDRESS, 0
        )
    return IssuedPassOut(
        holder_id=holder_id,
        pass_number=issued.pass_number,
        activation_code=issued.activation_code,
        tx_hash=receipt.tx_hash.to_0x_hex(),
        block_number=receipt.block_number,
    )


def block_pass(runtime: Runtime, pass_number: str, *, blocked: bool) -> PassOut:
    """Block (or unblock) in the registry and on chain; idempotent (no transaction when the
    chain already has that state)."""
    registry = runtime.store.registry
    tx_hash: str | None = None
    with registry_errors(), registry.transaction():
        record = registry.block_pass(pass_number) if blocked else registry.unblock_pass(pass_number)
        pid = _pid(record)
        state = runtime.client.pass_of(pid)
        if not state.registered or state.blocked != blocked:
            receipt = _transact(runtime, "blockPass" if blocked else "unblockPass", pid)
            tx_hash = receipt.tx_hash.to_0x_hex()
            state = runtime.client.pass_of(pid)
    return PassOut(
        pass_number=record.pass_number,
        status="blocked" if blocked else "active",
        registered_on_chain=state.registered,
        blocked_on_chain=state.blocked,
        card_serial=state.card_serial,
        tx_hash=tx_hash,
    )


def _card_token(runtime: Runtime, record: PassRecord, card: PrintedCard) -> tuple[str, int]:
    """The static card token: ``serial`` != 0, a long expiry (fixed by the card's issue time, so
    the same card always renders the same token), signed by the pass-signer key."""
    issued = card.issued_at if card.issued_at.tzinfo else card.issued_at.replace(tzinfo=UTC)
    expiry = int((issued + CARD_LIFETIME).timestamp())
    signed = sign_pass_token(
        PassToken(
            pass_id=_pid(record),
            serial=card.serial,
            expiry=expiry,
            amount_cap=Amount(runtime.settings.card_pin_limit),
        ),
        domain=runtime.domain,
        private_key=runtime.keys.pass_signer.key,
    )
    return encode_token_uri(signed), expiry


def issue_card(runtime: Runtime, pass_number: str) -> CardOut:
    """Issue or replace the printed card: a new serial in the registry (the old card revoked)
    and ``replaceCard`` on chain, which revokes the old serial there."""
    registry = runtime.store.registry
    with registry_errors(), registry.transaction():
        record = registry.pass_by_number(pass_number)
        card = registry.issue_card(record.pass_number)
        receipt = _transact(runtime, "replaceCard", _pid(record), card.serial)
    token, expiry = _card_token(runtime, record, card)
    return CardOut(
        pass_number=record.pass_number,
        serial=card.serial,
        issued_at=card.issued_at,
        expires_at=expiry,
        token_uri=token,
        card_png=f"/admin/passes/{record.pass_number}/card.png",
        card_pdf=f"/admin/passes/{record.pass_number}/card.pdf",
        tx_hash=receipt.tx_hash.to_0x_hex(),
        block_number=receipt.block_number,
    )


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType
        return ImageFont.load_default()


def _active_card(runtime: Runtime, pass_number: str) -> tuple[PassRecord, Holder, str]:
    """The pass, its holder and the token of a card printed now (404 problems if the pass has
    no card yet).

    A card token is never stored, so printing a card again re-issues it: a new serial in the
    registry and on chain, which revokes the card printed before (a copy someone kept, or a
    download someone saved, stops working). Each re-issue is logged."""
    registry = runtime.store.registry
    with registry_errors():
        pairs = registry.pass_holders(pass_number)
        if not pairs:
            raise reg.UnknownPass(f"no pass has number {pass_number!r}")
        record, holder = pairs[0]
        card = registry.active_card(record.pass_number)
    if card is None or card.status is not CardStatus.ACTIVE:
        raise ApiProblem(
            404, "card_unknown", f"pass {record.pass_number} has no printed card; issue one first"
        )
    issued = issue_card(runtime, record.pass_number)
    log.warning(
        "a printed card was re-issued for printing: serial %d revoked, serial %d issued",
        card.serial,
        issued.serial,
    )
    return record, holder, issued.token_uri


def card_png(runtime: Runtime, pass_number: str) -> bytes:
    """A printable card: the card's QR (level M, white quiet zone) with the pass number and the
    holder's first name under it."""
    record, holder, token = _active_card(runtime, pass_number)
    qr = Image.open(io.BytesIO(render_png(token))).convert("L")
    width = qr.width
    text_height = max(96, width // 5)
    canvas = Image.new("L", (width, qr.height + text_height), 255)
    canvas.paste(qr, (0, 0))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(max(24, width // 14)), _font(max(18, width // 20))
    y = qr.height
    for text, font in ((record.pass_number, big), (holder.first_name, small)):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text(((width - int(right - left)) // 2, y), text, fill=0, font=font)
        y += int(bottom - top) + 12
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()


#: The printed card: ID-1 (credit-card) size, landscape, in PDF points (1/72 inch).
CARD_WIDTH_MM: Final = 85.6
CARD_HEIGHT_MM: Final = 54.0
_MARGIN_MM: Final = 3.0
#: Side of the QR including its quiet zone: >= 30 mm of code, readable from about 30 cm.
_QR_SIDE_MM: Final = 46.0
_FONT_REGULAR: Final = "StadjerspasVera"
_FONT_BOLD: Final = "StadjerspasVeraBd"


def _card_fonts() -> tuple[str, str]:
    """Bitstream Vera (shipped with reportlab, embedded as a subset): unlike the standard PDF
    fonts it is embedded, so the card prints the same everywhere."""
    registered = pdfmetrics.getRegisteredFontNames()
    for name, filename in ((_FONT_REGULAR, "Vera.ttf"), (_FONT_BOLD, "VeraBd.ttf")):
        if name not in registered:
            pdfmetrics.registerFont(TTFont(name, filename))
    return _FONT_REGULAR, _FONT_BOLD


_MIN_FONT_SIZE: Final = 6.0


def _fit(text: str, font: str, size: float, width: float) -> tuple[str, float]:
    """``text`` at the largest font size <= ``size`` (>= 6 pt) that fits in ``width`` points;
    shortened with an ellipsis if it does not fit even at 6 pt."""
    measured = pdfmetrics.stringWidth(text, font, size)
    if measured <= width:
        return text, size
    scaled = size * width / measured * 0.99  # widths scale linearly with the size
    if scaled >= _MIN_FONT_SIZE:
        return text, scaled
    while len(text) > 1 and pdfmetrics.stringWidth(text, font, _MIN_FONT_SIZE) > width:
        text = text[:-2] + "…"
    return text, _MIN_FONT_SIZE


def draw_qr(
    pdf: Canvas,
    matrix: list[list[bool]],
    *,
    left: float,
    bottom: float,
    side: float,
    raster: bool = False,
) -> None:
    """Draw a QR ``matrix`` in a ``side`` x ``side`` square (points) whose lower left corner is
    (``left``, ``bottom``), with the 4-module quiet zone inside it: as vector modules, or with
    ``raster`` as a 1-bit image of one pixel per module (scaled without interpolation, so the
    edges stay sharp; about five times faster to write, for thousands of letters)."""
    modules = len(matrix) + 2 * DEFAULT_BORDER
    if raster:
        image = Image.new("1", (modules, modules), 1)
        dark = {
            (column + DEFAULT_BORDER, row_index + DEFAULT_BORDER)
            for row_index, row in enumerate(matrix)
            for column, value in enumerate(row)
            if value
        }
        image.putdata([0 if (x, y) in dark else 1 for y in range(modules) for x in range(modules)])
        pdf.drawImage(ImageReader(image), left, bottom, side, side)
        return
    module = side / modules
    pdf.setFillColorRGB(0, 0, 0)
    path = pdf.beginPath()  # one path: no seams between adjacent modules when rasterised
    for row_index, row in enumerate(matrix):
        y = bottom + side - (row_index + DEFAULT_BORDER + 1) * module
        column = 0
        while column < len(row):
            if not row[column]:
                column += 1
                continue
            start = column
            while column < len(row) and row[column]:
                column += 1
            x = left + (start + DEFAULT_BORDER) * module
            path.rect(x, y, (column - start) * module, module)
    pdf.drawPath(path, stroke=0, fill=1)


def card_pdf(runtime: Runtime, pass_number: str) -> bytes:
    """The printable card as a one-page PDF of ID-1 size (85.6 x 54 mm): the card's QR as vector
    modules (level M, 4-module white quiet zone, 46 mm square with it, so the code itself is
    about 40 mm: readable from 30 cm), the pass number and the holder's first name; nothing
    else personal."""
    record, holder, token = _active_card(runtime, pass_number)
    matrix = qr_matrix(token)
    regular, bold = _card_fonts()
    width, height = CARD_WIDTH_MM * mm, CARD_HEIGHT_MM * mm
    out = io.BytesIO()
    pdf = Canvas(out, pagesize=(width, height), pageCompression=1, invariant=True)
    pdf.setTitle(f"Stadjerspas {record.pass_number}")
    pdf.setAuthor("Stadjerspas")
    pdf.setSubject("Printed pass card")
    pdf.setFillColorRGB(1, 1, 1)
    pdf.rect(0, 0, width, height, stroke=0, fill=1)  # opaque white card and quiet zone

    side = _QR_SIDE_MM * mm
    left = _MARGIN_MM * mm
    draw_qr(pdf, matrix, left=left, bottom=(height - side) / 2, side=side)

    text_left = left + side + 2 * mm
    text_width = width - text_left - _MARGIN_MM * mm
    pdf.setFont(bold, 9)
    pdf.drawString(text_left, height - _MARGIN_MM * mm - 9, "Stadjerspas")
    number, number_size = _fit(record.pass_number, bold, 13, text_width)
    pdf.setFont(bold, number_size)
    pdf.drawString(text_left, height / 2 + 2 * mm, number)
    name, name_size = _fit(holder.first_name, regular, 11, text_width)
    pdf.setFont(regular, name_size)
    pdf.drawString(text_left, height / 2 - 4 * mm, name)
    pdf.showPage()
    pdf.save()
    return out.getvalue()


# -- schemes ----------------------------------------------------------------------------------


def _check_terms(body: SchemeIn) -> None:
    """The contract's ``SchemeTermsInvalid`` rules, checked first (422 ``scheme_terms_invalid``)."""

    def refuse(reason: str) -> None:
        raise ApiProblem(422, "scheme_terms_invalid", reason)

    if body.valid_until <= body.valid_from:
        refuse("valid_until must be after valid_from")
    if body.budget_cap == 0:
        refuse("budget_cap must be positive")
    if body.discount_bps > 10_000 or body.reimburse_bps > 10_000:
        refuse("basis points must be at most 10000")
    if body.kind == "discount":
        if (body.discount_bps == 0) == (body.discount_fixed == 0):
            refuse("a discount needs exactly one of discount_bps and discount_fixed")
        if body.discount_bps and body.per_redemption_cap == 0:
            refuse(
                f"a percentage discount ({body.discount_bps} bps) needs a per_redemption_cap: "
                "the most one redemption grants, in cents"
            )
    elif body.discount_bps or body.discount_fixed or body.reimburse_bps:
        refuse("only a discount scheme takes discount terms")
    if body.kind == "uses" and body.unit_value == 0:
        refuse("a uses scheme needs a unit_value")
    if body.kind != "uses" and body.unit_value != 0:
        refuse("only a uses scheme takes a unit_value")


def _scheme_out(
    scheme_id: int, state: SchemeState, name: str, tx_hash: str | None = None
) -> SchemeOut:
    t = state.terms
    return SchemeOut(
        scheme_id=scheme_id,
        name=name,
        kind=_KIND_NAME[t.kind],
        valid_from=t.valid_from,
        valid_until=t.valid_until,
        budget_cap=t.budget_cap,
        committed=state.committed,
        per_redemption_cap=t.per_redemption_cap,
        unit_value=t.unit_value,
        discount_bps=t.discount_bps,
        reimburse_bps=t.reimburse_bps,
        discount_fixed=t.discount_fixed,
        open_to_all_merchants=t.open_to_all_merchants,
        tx_hash=tx_hash,
    )


def create_scheme(runtime: Runtime, body: SchemeIn) -> SchemeOut:
    _check_terms(body)
    merchants: list[str] = []
    for merchant_id in dict.fromkeys(body.allowed_merchants):
        account = runtime.keys.merchant(merchant_id)
        if account is None:
            raise ApiProblem(404, "merchant_unknown", f"no merchant has id {merchant_id}")
        merchants.append(account.address)
    terms = SchemeTerms(
        kind=_KIND[body.kind],
        valid_from=body.valid_from,
        valid_until=body.valid_until,
        budget_cap=body.budget_cap,
        per_redemption_cap=body.per_redemption_cap,
        unit_value=body.unit_value,
        discount_bps=body.discount_bps,
        reimburse_bps=body.reimburse_bps,
        discount_fixed=body.discount_fixed,
        open_to_all_merchants=body.open_to_all_merchants,
    )
    receipt = _transact(runtime, "createScheme", terms.as_tuple())
    created = [e for e in runtime.client.receipt_events(receipt) if e.name == "SchemeCreated"]
    scheme_id = int(created[0].args["schemeId"])
    runtime.store.set_scheme_label(scheme_id, body.name)
    for address in merchants:
        _transact(runtime, "setMerchantAllowed", scheme_id, address, True)
    return _scheme_out(
        scheme_id, runtime.client.scheme_of(scheme_id), body.name, receipt.tx_hash.to_0x_hex()
    )


def list_schemes(runtime: Runtime) -> list[SchemeOut]:
    labels = runtime.store.scheme_labels()
    client = runtime.client
    return [
        _scheme_out(sid, client.scheme_of(sid), labels.get(sid, f"Scheme {sid}"))
        for sid in range(1, client.scheme_count() + 1)
    ]


def _open_scheme(runtime: Runtime, scheme_id: int) -> SchemeState:
    """The scheme, if it exists (else the contract's ``scheme_unknown``) and has not ended."""
    state = runtime.client.scheme_of(scheme_id)
    now = int(runtime.w3.eth.get_block("latest")["timestamp"])
    if now > state.terms.valid_until:
        raise ApiProblem(409, "scheme_ended", f"scheme {scheme_id} ended; nothing can be issued")
    return state


def _check_budget(scheme_id: int, state: SchemeState, total: int) -> None:
    kind = state.terms.kind
    value = (
        total
        if kind is SchemeKind.BUDGET
        else total * state.terms.unit_value
        if kind is SchemeKind.USES
        else 0
    )
    available = state.terms.budget_cap - state.committed
    if value > available:
        raise ApiProblem(
            409,
            "scheme_budget_exceeded",
            f"issuing this commits {value} cents of scheme {scheme_id}; {available} are left",
            requested=value,
            available=available,
        )


# -- CSV issuance -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    line: int
    pass_number: str
    pass_id: bytes
    amount: int


def _parse_csv(runtime: Runtime, data: bytes) -> list[_Line]:
    """Every line checked before anything is issued; problems reported by line."""
    if len(data) > MAX_CSV_BYTES:
        raise ApiProblem(413, "upload_too_large", f"the CSV is over {MAX_CSV_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiProblem(422, "csv_invalid", "the CSV is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise ApiProblem(422, "csv_invalid", f"line {reader.line_num}: {exc}") from None
    rows = [(n, row) for n, row in rows if any(cell.strip() for cell in row)]
    if not rows or [c.strip().lower() for c in rows[0][1]] != ["pass_number", "amount"]:
        raise ApiProblem(
            422, "csv_invalid", "the first line must be the header 'pass_number,amount'"
        )
    rows = rows[1:]
    if not rows:
        raise ApiProblem(422, "csv_empty", "the CSV has a header but no lines")
    if len(rows) > MAX_CSV_LINES:
        raise ApiProblem(413, "upload_too_large", f"the CSV has over {MAX_CSV_LINES} lines")
    known = {record.pass_number: record for record, _ in runtime.store.registry.pass_holders()}
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    lines: list[_Line] = []
    for number, row in rows:
        if len(row) != 2:
            errors.append({"line": number, "message": f"expected 2 fields, got {len(row)}"})
            continue
        pass_number, raw_amount = row[0].strip().upper(), row[1].strip()
        problems: list[str] = []
        record = known.get(pass_number)
        if record is None:
            problems.append(f"unknown pass number {row[0].strip()!r}")
        elif pass_number in seen:
            problems.append(f"pass number {pass_number} is also on line {seen[pass_number]}")
        amount = 0
        if not raw_amount.isascii() or not raw_amount.isdigit():
            problems.append(f"amount {raw_amount!r} is not a whole number of cents or uses")
        else:
            amount = int(raw_amount)
            if not 1 <= amount < _UINT64:
                problems.append(f"amount {amount} must be between 1 and {_UINT64 - 1}")
        if problems:
            errors.extend({"line": number, "message": message} for message in problems)
            continue
        assert record is not None
        seen[pass_number] = number
        lines.append(_Line(number, pass_number, _pid(record), amount))
    if errors:
        raise ApiProblem(
            422,
            "csv_lines_invalid",
            f"{len(errors)} problem(s) in the CSV; nothing was issued",
            errors=errors[:1000],
        )
    return lines


IssueItem = tuple[bytes, int]


def issue_in_batches(
    runtime: Runtime,
    scheme_id: int,
    items: Sequence[IssueItem],
    *,
    batch_size: int | None = None,
    in_flight: int = 1,
    label: str = "",
    on_sending: Callable[[int, Sequence[IssueItem]], tuple[int, ...]] | None = None,
    on_mined: Callable[[Sequence[IssueItem], TxReceipt], None] | None = None,
) -> list[TxReceipt]:
    """``issueBatch`` ``items`` (pass id, amount) in chunks of ``batch_size``, with up to
    ``in_flight`` transactions waiting for their receipts at once (each preflighted: a refusal
    raises the contract's typed error and sends nothing). ``on_sending(index, chunk)`` runs
    before a chunk is handed to the relayer and returns the outbox refs to record with it;
    ``on_mined(chunk, receipt)`` after its receipt. A revert raises its typed error after the
    chunks before it are done. ``batch_size`` defaults to :data:`BATCH_SIZE`."""
    size = batch_size or BATCH_SIZE
    relayer = runtime.issuer()
    client = runtime.client
    waiting: deque[tuple[Sequence[IssueItem], TxRequest, TxHandle]] = deque()
    receipts: list[TxReceipt] = []

    def finish() -> None:
        chunk, request, handle = waiting.popleft()
        receipt = runtime.receipt_of(relayer, request, handle)
        receipts.append(receipt)
        if on_mined is not None:
            on_mined(chunk, receipt)

    try:
        for index, start in enumerate(range(0, len(items), size)):
            chunk = items[start : start + size]
            data = client.call_data(
                "issueBatch", scheme_id, [pid for pid, _ in chunk], [amount for _, amount in chunk]
            )
            estimate = client.preflight(sender=relayer.address, data=data)
            refs = on_sending(index, chunk) if on_sending is not None else ()
            request = TxRequest(
                to=client.address, data=data, gas=gas_limit(estimate), label=label, refs=refs
            )
            waiting.append((chunk, request, relayer.submit(request)))
            if len(waiting) >= in_flight:
                finish()
        while waiting:
            finish()
    finally:
        for _chunk, _request, handle in waiting:  # an error above: let sent ones settle
            try:
                handle.result(timeout=runtime.settings.receipt_timeout_s)
            except Exception:  # the first error is the one raised
                log.warning("a batch sent before an error did not settle in time")
    return receipts


def start_csv_issuance(runtime: Runtime, *, scheme_id: int, data: bytes) -> Job:
    """Validate the whole CSV and the scheme's budget, then issue in chunks of
    :data:`BATCH_SIZE` (``issueBatch``) as a job. A chunk refused later (e.g. the budget was
    used meanwhile) fails the job; the chunks before it stay issued (see the job's progress)."""
    lines = _parse_csv(runtime, data)
    state = _open_scheme(runtime, scheme_id)
    total = sum(line.amount for line in lines)
    _check_budget(scheme_id, state, total)

    def work(progress: Progress) -> dict[str, Any]:
        progress.set_total(len(lines))
        receipts = issue_in_batches(
            runtime,
            scheme_id,
            [(line.pass_id, line.amount) for line in lines],
            on_mined=lambda chunk, _receipt: progress.advance(len(chunk)),
        )
        transactions = [receipt.tx_hash.to_0x_hex() for receipt in receipts]
        return {
            "scheme_id": scheme_id,
            "lines": len(lines),
            "total_amount": total,
            "transactions": transactions,
        }

    return jobs_of(runtime).submit("entitlements_csv", work, total=len(lines))


# -- cohorts ----------------------------------------------------------------------------------


def _age(born: date, at: date) -> int:
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


def cohorts_dir(runtime: Runtime) -> Path:
    """Where the leaves and proofs of issued cohorts are kept (one JSON file per root)."""
    return runtime.settings.var_dir / "cohorts"


def start_cohort(runtime: Runtime, body: CohortIn) -> Job:
    """Select the holders (active passes meeting every criterion), then, as a job: the Merkle
    tree over ``(index, pass_id, amount)``, its leaves and proofs saved to
    ``<var>/cohorts/<root>.json`` (pass ids only, no personal data; a claim on first use reads
    its proof there), and ``issueCohort`` on chain."""
    if body.min_age is None and body.max_age is None and body.district_codes is None:
        raise ApiProblem(422, "cohort_criteria_missing", "give an age band and/or district codes")
    if body.min_age is not None and body.max_age is not None and body.min_age > body.max_age:
        raise ApiProblem(422, "cohort_criteria_invalid", "min_age is above max_age")
    registry = runtime.store.registry
    districts = None
    if body.district_codes is not None:
        known = {d.code for d in registry.districts()}
        districts = {code.strip() for code in body.district_codes}
        unknown = sorted(districts - known)
        if unknown:
            raise ApiProblem(
                422, "district_unknown", f"unknown district codes: {unknown}", unknown=unknown
            )
    at = body.age_at or registry.today()
    pass_ids: list[bytes] = []
    for record, holder in registry.pass_holders():
        if record.status is not PassStatus.ACTIVE:
            continue
        if districts is not None and holder.district_code not in districts:
            continue
        age = _age(holder.birth_date, at)
        if body.min_age is not None and age < body.min_age:
            continue
        if body.max_age is not None and age > body.max_age:
            continue
        pass_ids.append(_pid(record))
    if not pass_ids:
        raise ApiProblem(422, "cohort_empty", "no active pass meets these criteria")
    total = body.amount * len(pass_ids)
    if total >= 2**128:
        raise ApiProblem(422, "cohort_total_too_large", "the cohort's total exceeds uint128")
    state = _open_scheme(runtime, body.scheme_id)
    _check_budget(body.scheme_id, state, total)
    scheme_id, amount = body.scheme_id, body.amount

    def work(progress: Progress) -> dict[str, Any]:
        progress.set_total(len(pass_ids) + 1)
        leaves = [CohortLeaf(i, pid, amount) for i, pid in enumerate(pass_ids)]
        tree = MerkleTree([cohort_leaf_hash(leaf) for leaf in leaves])
        root = tree.root
        entries = []
        for leaf in leaves:
            entries.append(
                {
                    "index": leaf.index,
                    "pass_id": "0x" + leaf.pass_id.hex(),
                    "amount": leaf.amount,
                    "proof": ["0x" + node.hex() for node in tree.proof(leaf.index)],
                }
            )
            if leaf.index % 1000 == 999:
                progress.advance(1000)
        progress.advance(len(leaves) % 1000)
        directory = cohorts_dir(runtime)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"0x{root.hex()}.json"
        document = {
            "scheme_id": scheme_id,
            "root": "0x" + root.hex(),
            "holder_count": len(leaves),
            "total_amount": total,
            "created_at": datetime.now(UTC).isoformat(),
            "leaves": entries,
        }
        temporary = path.with_suffix(f".{time.monotonic_ns()}.tmp")
        temporary.write_text(json.dumps(document), encoding="utf-8")
        temporary.replace(path)
        try:
            receipt = _transact(runtime, "issueCohort", scheme_id, root, len(leaves), total)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        cohort_claims.register(runtime, document)  # counters see the shares at once
        progress.advance(1)
        return {
            "scheme_id": scheme_id,
            "root": "0x" + root.hex(),
            "holder_count": len(leaves),
            "amount": amount,
            "total_amount": total,
            "tx_hash": receipt.tx_hash.to_0x_hex(),
            "block_number": receipt.block_number,
        }

    return jobs_of(runtime).submit("cohort", work, total=len(pass_ids) + 1)


def load_cohort(runtime: Runtime, root: bytes) -> dict[str, Any] | None:
    """The stored leaves and proofs of the cohort ``root`` (for a claim), or None."""
    path = cohorts_dir(runtime) / f"0x{root.hex()}.json"
    if not path.exists():
        return None
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


# -- merchants --------------------------------------------------------------------------------


def _location(body: MerchantLocationIn) -> reg.MerchantLocation:
    return reg.merchant_location(
        street=body.street,
        postcode=body.postcode,
        town=body.town,
        website=body.website,
        opening_hours=body.opening_hours,
    )


def _merchant_out(runtime: Runtime, merchant: MerchantRow) -> MerchantOut:
    assert merchant.id is not None
    return MerchantOut(
        id=merchant.id,
        name=merchant.name,
        kvk_number=merchant.kvk_number,
        address=merchant.address,
        category=merchant.category,
        iban=merchant.iban,
        bic=merchant.bic,
        active=merchant.active,
        merchant_role=runtime.client.has_role("merchant", merchant.address),
        location=MerchantLocationOut.of(merchant),
    )


def register_merchant(runtime: Runtime, body: MerchantIn) -> MerchantOut:
    """Enrol the partner end to end (:func:`api.partners.enrol_partner`): KvK and IBAN checked
    (mod-97 and country format), a signing key created and sealed in the partner keystore, the
    merchant role granted to its address, its relayer started: its terminals redeem at once."""
    with registry_errors():
        location = _location(body.location) if body.location is not None else None
        merchant = enrol_partner(
            runtime,
            name=body.name,
            kvk_number=body.kvk_number,
            category=body.category,
            iban=body.iban,
            location=location,
        )
    return _merchant_out(runtime, merchant)


def list_merchants(runtime: Runtime) -> list[MerchantOut]:
    return [_merchant_out(runtime, m) for m in runtime.store.registry.merchants()]


def set_merchant_location(
    runtime: Runtime, merchant_id: int, body: MerchantLocationIn | None
) -> MerchantOut:
    """Set (``body``) or clear (None) the merchant's public location; checked first, so a
    refusal changes nothing."""
    registry = runtime.store.registry
    with registry_errors():
        location = _location(body) if body is not None else None
        merchant = registry.set_merchant_location(merchant_id, location)
    return _merchant_out(runtime, merchant)


# -- audit ------------------------------------------------------------------------------------


def run_audit(runtime: Runtime, body: AuditIn) -> AuditOut:
    """Recompute the ledger from the node's events and compare it with the contract, the index
    and the reports, and the service's promises (its redemption records, read once the chain's
    head is known) and its outbox with the chain (``ledger.audit``); the differences are
    returned, never raised."""
    engine = runtime.store.db.engine
    head = int(runtime.w3.eth.block_number)
    start = runtime.deployment.deployed_block
    if body.to_block is not None and not start <= body.to_block <= head:
        raise ApiProblem(
            422, "block_out_of_range", f"to_block must be within {start}..{head}", head=head
        )
    try:
        result = audit(
            rpc=runtime.rpc,
            client=runtime.client,
            from_block=start,
            to_block=body.to_block,
            store=engine,
            compare_reports=body.compare_reports,
            promises=lambda: load_promises(engine),
        )
    except AuditError as exc:
        raise ApiProblem(503, "audit_unavailable", str(exc)) from None
    data = result.to_json()
    return AuditOut(
        ok=result.ok,
        chain_id=result.chain_id,
        contract=result.contract,
        from_block=result.from_block,
        to_block=result.to_block,
        block_hash=result.block_hash,
        events=result.events,
        checked=list(result.checked),
        notes=list(result.notes),
        differences=[DifferenceOut(**d) for d in data["differences"]],
    )


# -- payouts ----------------------------------------------------------------------------------


def _line_out(line: RunLine) -> PayoutLineOut:
    return PayoutLineOut(
        merchant=line.merchant,
        name=line.name,
        amount=line.amount,
        status=str(line.status),
        iban=line.iban,
        end_to_end_id=line.end_to_end_id,
        error=line.error,
    )


@contextmanager
def _settlement_errors() -> Iterator[None]:
    try:
        yield
    except RunNotFound as exc:
        raise ApiProblem(404, "payout_run_unknown", str(exc)) from None
    except OverlappingSettledPeriod as exc:
        raise ApiProblem(409, "payout_period_settled", str(exc)) from None
    except DebtorAccountInvalid as exc:
        raise ApiProblem(422, "debtor_invalid", str(exc)) from None
    except RunStateError as exc:
        raise ApiProblem(409, "payout_run_state", str(exc)) from None
    except SettlementError as exc:
        raise ApiProblem(409, "payout_refused", str(exc)) from None


def get_payout(runtime: Runtime, reference: str) -> PayoutRunOut:
    with _settlement_errors():
        run, lines = run_lines(runtime.store.db.engine, reference)
    return PayoutRunOut(
        reference=run.reference,
        status=str(run.status),
        period_start=run.period_start,
        period_end=run.period_end,
        execution_date=run.execution_date,
        total=run.total,
        transactions=run.transactions,
        pain001=f"/admin/payouts/{run.reference}/pain001.xml",
        lines=[_line_out(line) for line in lines],
    )


def create_payout(runtime: Runtime, body: PayoutIn) -> PayoutRunOut:
    """A pending payout run over the index for ``period`` with its pain.001 file, paid from the
    request's debtor account or else the configured one (``STADJERSPAS_PAYOUT_DEBTOR_*``).
    Merchants without a valid IBAN are reported in the lines (``invalid_iban``), never skipped
    silently."""
    try:
        period = Period.parse(body.period)
    except PeriodError as exc:
        raise ApiProblem(422, "period_invalid", str(exc)) from None
    with _settlement_errors():
        debtor = (
            DebtorAccount(name=body.debtor.name, iban=body.debtor.iban, bic=body.debtor.bic)
            if body.debtor is not None
            else runtime.settings.payout_debtor  # STADJERSPAS_PAYOUT_DEBTOR_*
        )
        result = create_run(
            runtime.store.db.engine,
            period=period,
            config=PayoutConfig(debtor=debtor),
            chain_id=runtime.client.chain_id,
            contract=runtime.client.address,
            execution_date=body.execution_date or datetime.now(UTC).date(),
        )
    if result.reference is None:
        raise ApiProblem(
            409,
            "payout_nothing_to_pay",
            f"no merchant can be paid for {period.label()}",
            reported=[_line_out(line).model_dump() for line in result.reported],
        )
    return get_payout(runtime, result.reference)


def payout_document(runtime: Runtime, reference: str) -> bytes:
    with _settlement_errors():
        run, _ = run_lines(runtime.store.db.engine, reference)
    return bytes(run.document)


class _RelayedSettlementChain(ClientSettlementChain):
    """Settlements sent by the admin account's relayer, so stored in the outbox first (a node
    restored from older state gets them back from the reconciler)."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime.client, runtime.keys.admin)
        self.runtime = runtime

    def settle(self, merchant: str, amount: int, reference: bytes) -> str:
        receipt = self.runtime.transact(
            self.runtime.admin(), "settle", to_checksum_address(merchant), amount, reference
        )
        return receipt.tx_hash.to_0x_hex()


def confirm_payout(runtime: Runtime, reference: str) -> ConfirmOut:
    """The bank paid the run: record ``settle`` per line on chain (idempotent). The admin
    account settles (it is given the settler role on first use)."""
    admin = runtime.keys.admin
    with runtime.key_locks.hold("admin-account"):
        with _settlement_errors():
            run_lines(runtime.store.db.engine, reference)  # unknown -> 404 before any grant
        if not runtime.client.has_role("settler", admin.address):
            runtime.transact(runtime.admin(), "grantRole", ROLES["settler"], admin.address)
        with _settlement_errors():
            result = confirm_run(
                runtime.store.db.engine, reference, _RelayedSettlementChain(runtime)
            )
    return ConfirmOut(
        reference=result.reference,
        complete=result.complete,
        settled=[_line_out(line) for line in result.settled],
        already=[_line_out(line) for line in result.already],
        failed=[_line_out(line) for line in result.failed],
    )
