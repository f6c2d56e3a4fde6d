"""What the holder routes do beyond the token: balances with validity dates, history, offers.

Every function takes the pass number the route already checked (object-level rule in
:mod:`api.deps`: a holder reaches only their own pass). Nothing here returns another holder's
data or a merchant's personal data (merchants are organisations: name, category and their public
location, if the municipality registered one).

History comes from the chain index (``index_redemption`` / ``index_reversal`` by pass id) when
the indexer has a checkpoint for this chain and contract, else from this service's own
redemption records (their signed tokens name the pass); ``source`` says which.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal, TypedDict, TypeVar

from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from api.admin_schemas import MerchantLocationOut
from api.problems import ApiProblem
from api.runtime import Runtime
from api.services import KIND_NAMES, scheme_balances
from api.store import PassHolder, RedemptionRecord, RedemptionStatus
from ledger.client import SchemeKind
from ledger.passid import pass_id
from ledger.store.index import IndexCheckpoint, IndexedRedemption, IndexedReversal
from wallet import WalletError, decode_token_uri

__all__ = [
    "HistoryItem",
    "HistoryOut",
    "HolderBalance",
    "HolderBalancesOut",
    "MerchantPlace",
    "OfferCatalogueOut",
    "OfferEntry",
    "balances_with_validity",
    "history",
    "offer_catalogue",
]

Kind = Literal["budget", "uses", "discount"]


# -- response models --------------------------------------------------------------------------


class HolderBalance(BaseModel):
    scheme_id: int
    name: str
    kind: Kind
    unit: Literal["cents", "uses"]
    balance: int = Field(description="What is left, including an unclaimed cohort share.")
    unlimited: bool = Field(description="True for an offer that never runs out.")
    unclaimed: int = Field(
        default=0,
        description="Of ``balance``, a cohort share not yet claimed; the first use claims it.",
    )
    valid_from: int = Field(description="Unix seconds the scheme opens.")
    valid_until: int = Field(description="Unix seconds the scheme (and this balance) expires.")
    valid_from_date: date
    expires_on: date = Field(description="The last day the balance can be used (UTC).")
    valid_now: bool


class HolderBalancesOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "pass_number": "GR0000001",
                    "first_name": "Anna",
                    "blocked": False,
                    "balances": [
                        {
                            "scheme_id": 1,
                            "name": "Kindpakket",
                            "kind": "budget",
                            "unit": "cents",
                            "balance": 5000,
                            "unlimited": False,
                            "valid_from": 1767225600,
                            "valid_until": 1798761599,
                            "valid_from_date": "2026-01-01",
                            "expires_on": "2026-12-31",
                            "valid_now": True,
                        }
                    ],
                }
            ]
        }
    }

    pass_number: str
    first_name: str
    blocked: bool
    balances: list[HolderBalance] = Field(description="Schemes with something left, per scheme.")


class HistoryItem(BaseModel):
    kind: Literal["redemption", "reversal"]
    redemption_id: str
    scheme_id: int
    scheme_name: str
    merchant_name: str | None
    amount: int = Field(description="Debited from the balance (negative: restored by a reversal).")
    discount: int
    at: int | None = Field(description="Unix seconds (block time, or when the API recorded it).")
    tx_hash: str | None
    scheme_kind: Kind | None = Field(
        default=None, description="The scheme's kind (None if the scheme is unknown)."
    )
    unit: Literal["cents", "uses"] | None = Field(
        default=None,
        description="Unit of ``amount``: cents (budget) or uses (uses and discount schemes; "
        "a discount redemption uses 1 and grants ``discount`` cents).",
    )
    merchant_id: int | None = Field(default=None, description="The merchant's registry id.")
    block_number: int | None = Field(default=None, description="The block of ``tx_hash``.")


class HistoryOut(BaseModel):
    pass_number: str
    source: Literal["index", "api_records"]
    items: list[HistoryItem] = Field(description="Newest first.")
    offset: int = Field(default=0, description="How many newer items were skipped.")
    next_offset: int | None = Field(
        default=None, description="The ``offset`` of the next (older) page, if there is one."
    )


class MerchantPlace(BaseModel):
    merchant_id: int
    name: str
    category: str
    location: MerchantLocationOut | None = Field(
        default=None, description="Where it is (street, postcode, town, ...), if registered."
    )


class OfferEntry(BaseModel):
    scheme_id: int
    name: str
    kind: Kind
    valid_from: int
    valid_until: int
    expires_on: date
    valid_now: bool
    discount_bps: int
    discount_fixed: int
    balance: int
    unlimited: bool
    open_to_all_merchants: bool
    where: list[MerchantPlace] = Field(description="Active merchants that accept it.")
    unit: Literal["cents", "uses"] = Field(
        default="uses", description="Unit of ``balance``: cents (budget) or uses."
    )
    per_redemption_cap: int | None = Field(
        default=None,
        description="The most one redemption may take, if capped: cents (budget), uses (uses), "
        "or the largest discount in cents (discount).",
    )


class OfferCatalogueOut(BaseModel):
    pass_number: str
    offers: list[OfferEntry]


# -- helpers ----------------------------------------------------------------------------------


def _holder(runtime: Runtime, pass_number: str) -> PassHolder:
    holder = runtime.store.holder(pass_number)
    if holder is None:
        raise ApiProblem(404, "pass_number_unknown", f"no holder has pass number {pass_number!r}")
    return holder


def _pid(holder: PassHolder) -> bytes:
    return pass_id(pass_secret=holder.pass_secret, pass_number=holder.pass_number)


def _day(ts: int) -> date:
    return datetime.fromtimestamp(max(0, min(ts, 253402300799)), UTC).date()


def _index_is_live(runtime: Runtime) -> bool:
    chain_id, address = runtime.client.chain_id, runtime.client.address
    with runtime.store.session() as session:
        row = session.get(IndexCheckpoint, (chain_id, address)) or session.get(
            IndexCheckpoint, (chain_id, address.lower())
        )
        return row is not None


# -- balances ---------------------------------------------------------------------------------


def balances_with_validity(runtime: Runtime, pass_number: str) -> HolderBalancesOut:
    holder = _holder(runtime, pass_number)
    pid = _pid(holder)
    snapshot = runtime.state.pass_snapshot(pid)
    state = snapshot.state
    now = int(time.time())
    out = [
        HolderBalance(
            **b.fields(),
            **b.validity(now),
            valid_from_date=_day(b.terms.valid_from),
            expires_on=_day(b.terms.valid_until),
        )
        for b in scheme_balances(
            runtime, pid, balances=snapshot.balances, schemes=runtime.state.schemes()
        )
        if b.balance != 0
    ]
    return HolderBalancesOut(
        pass_number=holder.pass_number,
        first_name=holder.first_name,
        blocked=state.blocked or holder.blocked,
        balances=out,
    )


# -- history ----------------------------------------------------------------------------------


_MAX_HISTORY = 10_000


def _merchant_names(
    runtime: Runtime,
) -> tuple[dict[str, tuple[int | None, str]], dict[int, str]]:
    """Merchants by chain address (lower case) -> (id, name), and by id -> name."""
    by_address: dict[str, tuple[int | None, str]] = {}
    by_id: dict[int, str] = {}
    for merchant in runtime.store.merchants():
        by_address[merchant.address.lower()] = (merchant.id, merchant.name)
        if merchant.id is not None:
            by_id[merchant.id] = merchant.name
    return by_address, by_id


def _scheme_kinds(runtime: Runtime) -> dict[int, SchemeKind]:
    return {scheme_id: terms.kind for scheme_id, terms in runtime.client.schemes()}


#: Orders history items: (unix seconds, block number, log index); newest is largest.
_Order = tuple[float, int, int]


_Row = TypeVar("_Row", IndexedRedemption, IndexedReversal)


def _newest(session: Session, table: type[_Row], key: str, wanted: int) -> Sequence[_Row]:
    """The ``wanted`` newest rows of ``table`` for the pass id ``key``."""
    return session.exec(
        select(table)
        .where(table.pass_id == key)
        .order_by(col(table.block_number).desc(), col(table.log_index).desc())
        .limit(wanted)
    ).all()


@dataclass(frozen=True, slots=True)
class _IndexedHistory:
    """Turns indexed redemptions and reversals into history items."""

    labels: Mapping[int, str]
    kinds: dict[int, SchemeKind]
    by_address: Mapping[str, tuple[int | None, str]]

    def item(
        self,
        row: IndexedRedemption | IndexedReversal,
        *,
        kind: Literal["redemption", "reversal"],
        amount: int,
    ) -> tuple[_Order, HistoryItem]:
        merchant_id, merchant_name = self.by_address.get(row.merchant.lower(), (None, None))
        discount = int(row.discount) if isinstance(row, IndexedRedemption) else 0
        return (
            (row.block_time, row.block_number, row.log_index),
            HistoryItem(
                kind=kind,
                redemption_id=row.redemption_id,
                scheme_id=row.scheme_id,
                scheme_name=self.labels.get(row.scheme_id, f"Scheme {row.scheme_id}"),
                merchant_name=merchant_name,
                amount=amount,
                discount=discount,
                at=row.block_time,
                tx_hash=row.transaction_hash,
                **_kind_fields(self.kinds, row.scheme_id),
                merchant_id=merchant_id,
                block_number=row.block_number,
            ),
        )


def history(runtime: Runtime, pass_number: str, *, limit: int = 50, offset: int = 0) -> HistoryOut:
    """The pass's redemptions and reversals, newest first: ``limit`` items after skipping the
    ``offset`` newest (``next_offset`` is set when older items follow)."""
    holder = _holder(runtime, pass_number)
    pid = _pid(holder)
    labels = runtime.store.scheme_labels()
    kinds = _scheme_kinds(runtime)
    by_address, by_id = _merchant_names(runtime)
    offset = max(0, min(offset, _MAX_HISTORY))
    wanted = offset + limit + 1  # one more than the page: is there an older page?
    items: list[tuple[_Order, HistoryItem]] = []
    if _index_is_live(runtime):
        key = "0x" + pid.hex()
        with runtime.store.session() as session:
            redemptions = _newest(session, IndexedRedemption, key, wanted)
            reversals = _newest(session, IndexedReversal, key, wanted)
        indexed = _IndexedHistory(labels=labels, kinds=kinds, by_address=by_address)
        items += [indexed.item(r, kind="redemption", amount=int(r.debited)) for r in redemptions]
        items += [indexed.item(v, kind="reversal", amount=-int(v.debited)) for v in reversals]
        source: Literal["index", "api_records"] = "index"
    else:
        items = _history_from_records(runtime, pid, labels, by_id, kinds)
        source = "api_records"
    items.sort(key=lambda entry: entry[0], reverse=True)
    page = [item for _, item in items[offset : offset + limit]]
    more = len(items) > offset + limit and offset + limit < _MAX_HISTORY
    return HistoryOut(
        pass_number=holder.pass_number,
        source=source,
        items=page,
        offset=offset,
        next_offset=offset + limit if more else None,
    )


class _KindFields(TypedDict):
    scheme_kind: Kind | None
    unit: Literal["cents", "uses"] | None


def _kind_fields(kinds: dict[int, SchemeKind], scheme_id: int) -> _KindFields:
    kind = kinds.get(scheme_id)
    if kind is None:
        return {"scheme_kind": None, "unit": None}
    return {
        "scheme_kind": KIND_NAMES[kind],
        "unit": "cents" if kind is SchemeKind.BUDGET else "uses",
    }


def _history_from_records(
    runtime: Runtime,
    pid: bytes,
    labels: dict[int, str],
    by_id: dict[int, str],
    kinds: dict[int, SchemeKind],
) -> list[tuple[_Order, HistoryItem]]:
    """Without an index: this service's own succeeded redemptions whose token names the pass
    (a scan of the records: fine for a development or small deployment)."""
    items: list[tuple[_Order, HistoryItem]] = []
    with runtime.store.session() as session:
        records = session.exec(
            select(RedemptionRecord).where(RedemptionRecord.status == RedemptionStatus.SUCCEEDED)
        ).all()
        for record in records:
            try:
                if decode_token_uri(record.token_uri).token.pass_id != pid:
                    continue
            except WalletError:
                continue
            name = labels.get(record.scheme_id, f"Scheme {record.scheme_id}")
            created = record.created_at
            created = created if created.tzinfo is not None else created.replace(tzinfo=UTC)
            items.append(
                (
                    (created.timestamp(), record.block_number or 0, 0),
                    HistoryItem(
                        kind="redemption",
                        redemption_id=str(record.redemption_id),
                        scheme_id=record.scheme_id,
                        scheme_name=name,
                        merchant_name=by_id.get(record.merchant_id),
                        amount=record.debited or 0,
                        discount=record.discount or 0,
                        at=int(created.timestamp()),
                        tx_hash=record.tx_hash,
                        **_kind_fields(kinds, record.scheme_id),
                        merchant_id=record.merchant_id,
                        block_number=record.block_number,
                    ),
                )
            )
            if record.reversed_at is not None:
                reversed_at = record.reversed_at
                if reversed_at.tzinfo is None:
                    reversed_at = reversed_at.replace(tzinfo=UTC)
                items.append(
                    (
                        (reversed_at.timestamp(), record.reversal_block_number or 0, 1),
                        HistoryItem(
                            kind="reversal",
                            redemption_id=str(record.redemption_id),
                            scheme_id=record.scheme_id,
                            scheme_name=name,
                            merchant_name=by_id.get(record.merchant_id),
                            amount=-(record.debited or 0),
                            discount=0,
                            at=int(reversed_at.timestamp()),
                            tx_hash=record.reversal_tx_hash,
                            **_kind_fields(kinds, record.scheme_id),
                            merchant_id=record.merchant_id,
                            block_number=record.reversal_block_number,
                        ),
                    )
                )
    return items


# -- offers -----------------------------------------------------------------------------------


def offer_catalogue(runtime: Runtime, pass_number: str) -> OfferCatalogueOut:
    """Discount schemes (open to everyone with a pass) and schemes this pass holds a balance
    in, each with the active merchants that accept it (open to all, or allowed on chain)."""
    holder = _holder(runtime, pass_number)
    pid = _pid(holder)
    snapshot = runtime.state.pass_snapshot(pid)
    merchants = [m for m in runtime.store.merchants() if m.active and m.id is not None]
    locations = {m.id: MerchantLocationOut.of(m) for m in merchants}
    now = int(time.time())
    offers: list[OfferEntry] = []
    held = scheme_balances(
        runtime, pid, balances=snapshot.balances, schemes=runtime.state.schemes()
    )
    for b in held:
        terms = b.terms
        if terms.kind is not SchemeKind.DISCOUNT and b.balance == 0:
            continue
        if terms.valid_until < now:
            continue
        where = [
            MerchantPlace(
                merchant_id=m.id,
                name=m.name,
                category=m.category,
                location=locations[m.id],
            )
            for m in merchants
            if m.id is not None
            and (
                terms.open_to_all_merchants
                or runtime.state.merchant_allowed(b.scheme_id, m.address)
            )
        ]
        offers.append(
            OfferEntry(
                scheme_id=b.scheme_id,
                name=b.name,
                kind=b.kind,
                valid_from=terms.valid_from,
                valid_until=terms.valid_until,
                expires_on=_day(terms.valid_until),
                valid_now=b.valid_at(now),
                discount_bps=terms.discount_bps,
                discount_fixed=terms.discount_fixed,
                balance=b.balance,
                unlimited=b.unlimited,
                open_to_all_merchants=terms.open_to_all_merchants,
                where=where,
                unit=b.unit,
                per_redemption_cap=terms.per_redemption_cap or None,
            )
        )
    return OfferCatalogueOut(pass_number=holder.pass_number, offers=offers)
