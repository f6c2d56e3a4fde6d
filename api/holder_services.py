"""What the holder routes do beyond the token: balances with validity dates, history, offers.

Every function takes the pass number the route already checked (object-level rule in
:mod:`api.deps`: a holder reaches only their own pass). Nothing here returns another holder's
data or a merchant's personal data (merchants are organisations: name and category only).

History comes from the chain index (``index_redemption`` / ``index_reversal`` by pass id) when
the indexer has a checkpoint for this chain and contract, else from this service's own
redemption records (their signed tokens name the pass); ``source`` says which.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlmodel import col, select
from web3 import Web3

from api.problems import ApiProblem
from api.runtime import Runtime
from api.services import KIND_NAMES
from api.store import PassHolder, RedemptionRecord, RedemptionStatus
from ledger.client import UNLIMITED, SchemeKind
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
    balance: int
    unlimited: bool = Field(description="True for an offer that never runs out.")
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


class HistoryOut(BaseModel):
    pass_number: str
    source: Literal["index", "api_records"]
    items: list[HistoryItem] = Field(description="Newest first.")


class MerchantPlace(BaseModel):
    merchant_id: int
    name: str
    category: str


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
    client = runtime.client
    state = client.pass_of(pid)
    labels = runtime.store.scheme_labels()
    now = int(time.time())
    out: list[HolderBalance] = []
    for scheme_id, terms in runtime.client.schemes():
        balance = client.balance_of(scheme_id, pid)
        if balance == 0:
            continue
        out.append(
            HolderBalance(
                scheme_id=scheme_id,
                name=labels.get(scheme_id, f"Scheme {scheme_id}"),
                kind=KIND_NAMES[terms.kind],
                unit="cents" if terms.kind is SchemeKind.BUDGET else "uses",
                balance=balance,
                unlimited=balance == UNLIMITED,
                valid_from=terms.valid_from,
                valid_until=terms.valid_until,
                valid_from_date=_day(terms.valid_from),
                expires_on=_day(terms.valid_until),
                valid_now=terms.valid_from <= now <= terms.valid_until,
            )
        )
    return HolderBalancesOut(
        pass_number=holder.pass_number,
        first_name=holder.first_name,
        blocked=state.blocked or holder.blocked,
        balances=out,
    )


# -- history ----------------------------------------------------------------------------------


def _merchant_names(runtime: Runtime) -> tuple[dict[str, str], dict[int, str]]:
    by_address: dict[str, str] = {}
    by_id: dict[int, str] = {}
    for merchant in runtime.store.merchants():
        by_address[merchant.address.lower()] = merchant.name
        if merchant.id is not None:
            by_id[merchant.id] = merchant.name
    return by_address, by_id


def history(runtime: Runtime, pass_number: str, *, limit: int = 50) -> HistoryOut:
    holder = _holder(runtime, pass_number)
    pid = _pid(holder)
    labels = runtime.store.scheme_labels()
    by_address, by_id = _merchant_names(runtime)
    items: list[HistoryItem] = []
    if _index_is_live(runtime):
        key = "0x" + pid.hex()
        with runtime.store.session() as session:
            redemptions = session.exec(
                select(IndexedRedemption)
                .where(IndexedRedemption.pass_id == key)
                .order_by(col(IndexedRedemption.block_number).desc())
                .limit(limit)
            ).all()
            reversals = session.exec(
                select(IndexedReversal)
                .where(IndexedReversal.pass_id == key)
                .order_by(col(IndexedReversal.block_number).desc())
                .limit(limit)
            ).all()
            items.extend(
                HistoryItem(
                    kind="redemption",
                    redemption_id=r.redemption_id,
                    scheme_id=r.scheme_id,
                    scheme_name=labels.get(r.scheme_id, f"Scheme {r.scheme_id}"),
                    merchant_name=by_address.get(r.merchant.lower()),
                    amount=int(r.debited),
                    discount=int(r.discount),
                    at=r.block_time,
                    tx_hash=r.transaction_hash,
                )
                for r in redemptions
            )
            items.extend(
                HistoryItem(
                    kind="reversal",
                    redemption_id=v.redemption_id,
                    scheme_id=v.scheme_id,
                    scheme_name=labels.get(v.scheme_id, f"Scheme {v.scheme_id}"),
                    merchant_name=by_address.get(v.merchant.lower()),
                    amount=-int(v.debited),
                    discount=0,
                    at=v.block_time,
                    tx_hash=v.transaction_hash,
                )
                for v in reversals
            )
        source: Literal["index", "api_records"] = "index"
    else:
        items = _history_from_records(runtime, pid, labels, by_id)
        source = "api_records"
    items.sort(key=lambda item: (item.at or 0, item.kind == "reversal"), reverse=True)
    return HistoryOut(pass_number=holder.pass_number, source=source, items=items[:limit])


def _history_from_records(
    runtime: Runtime, pid: bytes, labels: dict[int, str], by_id: dict[int, str]
) -> list[HistoryItem]:
    """Without an index: this service's own succeeded redemptions whose token names the pass
    (a scan of the records: fine for a development or small deployment)."""
    items: list[HistoryItem] = []
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
                )
            )
            if record.reversed_at is not None:
                reversed_at = record.reversed_at
                if reversed_at.tzinfo is None:
                    reversed_at = reversed_at.replace(tzinfo=UTC)
                items.append(
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
                    )
                )
    return items


# -- offers -----------------------------------------------------------------------------------


def offer_catalogue(runtime: Runtime, pass_number: str) -> OfferCatalogueOut:
    """Discount schemes (open to everyone with a pass) and schemes this pass holds a balance
    in, each with the active merchants that accept it (open to all, or allowed on chain)."""
    holder = _holder(runtime, pass_number)
    pid = _pid(holder)
    client = runtime.client
    labels = runtime.store.scheme_labels()
    merchants = [m for m in runtime.store.merchants() if m.active and m.id is not None]
    now = int(time.time())
    offers: list[OfferEntry] = []
    for scheme_id, terms in runtime.client.schemes():
        balance = client.balance_of(scheme_id, pid)
        if terms.kind is not SchemeKind.DISCOUNT and balance == 0:
            continue
        if terms.valid_until < now:
            continue
        where = [
            MerchantPlace(merchant_id=m.id, name=m.name, category=m.category)
            for m in merchants
            if m.id is not None
            and (
                terms.open_to_all_merchants
                or bool(
                    client.contract.functions.isMerchantAllowed(
                        scheme_id, Web3.to_checksum_address(m.address)
                    ).call()
                )
            )
        ]
        offers.append(
            OfferEntry(
                scheme_id=scheme_id,
                name=labels.get(scheme_id, f"Scheme {scheme_id}"),
                kind=KIND_NAMES[terms.kind],
                valid_from=terms.valid_from,
                valid_until=terms.valid_until,
                expires_on=_day(terms.valid_until),
                valid_now=terms.valid_from <= now <= terms.valid_until,
                discount_bps=terms.discount_bps,
                discount_fixed=terms.discount_fixed,
                balance=balance,
                unlimited=balance == UNLIMITED,
                open_to_all_merchants=terms.open_to_all_merchants,
                where=where,
            )
        )
    return OfferCatalogueOut(pass_number=holder.pass_number, offers=offers)
