"""Rows for the index and registry tables, inserted directly (no chain needed)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, insert

from ledger.store.base import metadata

_log = itertools.count(1)
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def ts(day: str, hour: int = 12) -> int:
    d = date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, hour, tzinfo=UTC).timestamp())


def pid(n: int) -> str:
    return "0x" + f"{n:064x}"


def merchant(n: int) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address("0x" + f"{n:040x}")


class Rows:
    def __init__(self, engine: Engine, chain_id: int = 31337) -> None:
        self.engine = engine
        self.chain_id = chain_id

    def _event(self, table: str, when: int, **values: Any) -> None:
        n = next(_log)
        row = {
            "chain_id": self.chain_id,
            "block_number": n,
            "block_hash": "0x" + f"{n:064x}",
            "block_time": when,
            "transaction_hash": "0x" + f"{n:064x}",
            "log_index": 0,
            **values,
        }
        with self.engine.begin() as conn:
            conn.execute(insert(metadata.tables[table]), [row])

    def scheme(self, scheme_id: int, kind: str = "budget") -> None:
        self._event(
            "index_scheme",
            ts("2024-01-01"),
            scheme_id=scheme_id,
            kind=kind,
            valid_from=0,
            valid_until=2**40,
            per_redemption_cap=0,
            unit_value=0,
            discount_bps=0,
            reimburse_bps=0,
            discount_fixed=0,
            budget_cap=10**9,
            open_to_all_merchants=True,
        )

    def issue(self, scheme_id: int, pass_n: int, amount: int, when: int) -> None:
        self._event(
            "index_entitlement",
            when,
            position=0,
            scheme_id=scheme_id,
            pass_id=pid(pass_n),
            amount=amount,
            unlimited=False,
            source="issue",
        )

    def redeem(
        self, scheme_id: int, pass_n: int, amount: int, when: int, merchant_n: int = 1
    ) -> str:
        rid = str(next(_log))
        self._event(
            "index_redemption",
            when,
            redemption_id=rid,
            pass_id=pid(pass_n),
            scheme_id=scheme_id,
            merchant=merchant(merchant_n),
            amount=amount,
            debited=amount,
            discount=0,
            credited=amount,
        )
        return rid

    def reverse(
        self, scheme_id: int, pass_n: int, amount: int, when: int, merchant_n: int = 1
    ) -> None:
        self._event(
            "index_reversal",
            when,
            redemption_id=str(next(_log)),
            pass_id=pid(pass_n),
            scheme_id=scheme_id,
            merchant=merchant(merchant_n),
            debited=amount,
            credited=amount,
        )

    def expire(self, scheme_id: int, pass_n: int, amount: int, when: int) -> None:
        self._event("index_expiry", when, scheme_id=scheme_id, pass_id=pid(pass_n), amount=amount)

    def settle(self, merchant_n: int, amount: int, when: int, reference: str) -> None:
        self._event(
            "index_settlement",
            when,
            merchant=merchant(merchant_n),
            payment_reference=reference,
            amount=amount,
        )

    def district(self, code: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(metadata.tables["registry_district"]),
                [{"code": code, "name": f"Wijk {code}", "municipality": "Groningen"}],
            )

    def holder(self, holder_id: int, district: str | None, pass_n: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(metadata.tables["registry_holder"]),
                [
                    {
                        "id": holder_id,
                        "first_name": "A",
                        "last_name": f"H{holder_id}",
                        "birth_date": date(1980, 1, 1),
                        "postcode": "9711AA",
                        "district_code": district,
                        "household_role": "other",
                        "created_at": NOW,
                    }
                ],
            )
            conn.execute(
                insert(metadata.tables["registry_pass"]),
                [
                    {
                        "holder_id": holder_id,
                        "pass_number": f"P{pass_n}",
                        "pass_secret": b"\x01" * 32,
                        "pass_id": pid(pass_n),
                        "status": "active",
                        "created_at": NOW,
                    }
                ],
            )

    def merchant(
        self, merchant_n: int, *, iban: str | None = "NL91ABNA0417164300", bic: str | None = None
    ) -> str:
        address = merchant(merchant_n)
        self.merchant_at(address, name=f"Partner {merchant_n}", iban=iban, bic=bic)
        return address

    def merchant_at(
        self, address: str, *, name: str, iban: str | None, bic: str | None = None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(metadata.tables["registry_merchant"]),
                [
                    {
                        "name": name,
                        "kvk_number": "12345678",
                        "iban": iban,
                        "bic": bic,
                        "category": "sport",
                        "address": address,
                        "active": True,
                    }
                ],
            )
