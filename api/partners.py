"""Partners enrolled end to end: registry entry, signing key, merchant role, relayer.

:func:`enrol_partner` is the one path every partner takes (the admin page and API, the CSV
import, the demo partners at development start):

1. a new account is created and its key sealed in the partner keystore
   (:mod:`api.partner_keystore`) before anything else refers to it;
2. the partner is registered (KvK number, IBAN, category, location: the registry checks them)
   with that account's address, and the admin account grants the address the merchant role on
   chain, in one registry transaction (a refused grant registers nothing, and the unused key is
   discarded);
3. the running service starts the partner's relayer and redemption batcher
   (:meth:`api.runtime.Runtime.start_merchant`): its terminals redeem at once, no restart.

The chain's gas price is 0 (anvil ``--gas-price 0 --base-fee 0``, Besu ``min-gas-price 0``),
so the new account needs no funding. Only the address goes on chain: the partner's name, KvK
number and IBAN stay in the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger.client import ROLES
from ledger.partner_import import PartnerRow, read_partners
from ledger.registry import CsvSource, MerchantLocation
from ledger.store.registry import Merchant

if TYPE_CHECKING:
    from api.runtime import Runtime

__all__ = ["PartnerImport", "enrol_demo_partners", "enrol_partner", "import_partners"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartnerImport:
    """What a partners CSV did: the merchant ids enrolled now and the KvK numbers already
    registered (skipped: importing the same file again enrols nothing twice)."""

    enrolled: list[int]
    skipped: list[str]


def enrol_partner(
    runtime: Runtime,
    *,
    name: str,
    kvk_number: str,
    category: str,
    iban: str | None,
    location: MerchantLocation | None = None,
    merchant_id: int | None = None,
) -> Merchant:
    """Enrol one partner end to end (see the module); raises the registry's errors
    (:class:`~ledger.registry.RegistryError`) or the chain's, and then changes nothing."""
    account = runtime.keystore.create()
    registry = runtime.store.registry
    try:
        with registry.transaction():
            merchant = registry.register_merchant(
                name=name,
                kvk_number=kvk_number,
                address=account.address,
                category=category,
                iban=iban,
                location=location,
                merchant_id=merchant_id,
            )
            runtime.transact(runtime.admin(), "grantRole", ROLES["merchant"], account.address)
    except BaseException:
        runtime.keystore.discard(account.address)
        raise
    assert merchant.id is not None
    runtime.start_merchant(merchant.id, account)
    log.info("partner enrolled: merchant %s", merchant.id)
    return merchant


def import_partners(runtime: Runtime, source: CsvSource) -> PartnerImport:
    """Check every line first (:func:`ledger.partner_import.read_partners`: any problem rejects
    the file, nothing enrolled), then enrol each partner whose KvK number is not registered."""
    rows = read_partners(source)
    with runtime.key_locks.hold("partner-import"):  # two imports of one file enrol once
        registered = {m.kvk_number for m in runtime.store.registry.merchants()}
        enrolled: list[int] = []
        skipped: list[str] = []
        for row in rows:
            if row.kvk_number in registered:
                skipped.append(row.kvk_number)
                continue
            merchant = _enrol_row(runtime, row)
            assert merchant.id is not None
            enrolled.append(merchant.id)
            registered.add(row.kvk_number)
    return PartnerImport(enrolled=enrolled, skipped=skipped)


def _enrol_row(runtime: Runtime, row: PartnerRow) -> Merchant:
    return enrol_partner(
        runtime,
        name=row.name,
        kvk_number=row.kvk_number,
        category=row.category,
        iban=row.iban,
        location=row.location,
    )


def enrol_demo_partners(runtime: Runtime, *, report: Callable[[str], None]) -> int:
    """Development: enrol the demo partners (merchant ids 1..3) that are missing, through
    :func:`enrol_partner`. A demo partner registered without a key in the keystore (a
    development database from before the keystore) gets a new key and address."""
    from api.demo import DEMO_MERCHANTS, demo_merchant_location

    registry = runtime.store.registry
    enrolled = 0
    for merchant_id, data in enumerate(DEMO_MERCHANTS, start=1):
        if runtime.keys.merchant(merchant_id) is not None:
            continue
        current = registry.find_merchant(merchant_id)
        if current is None:
            enrol_partner(
                runtime,
                name=data.name,
                kvk_number=data.kvk_number,
                category=data.category,
                iban=data.iban,
                # the demo's places come with the demo data (seed_demo locates them)
                location=demo_merchant_location(merchant_id)
                if runtime.settings.seeds_demo
                else None,
                merchant_id=merchant_id,
            )
        else:
            account = runtime.keystore.create()
            registry.set_merchant_address(merchant_id, account.address)
            runtime.transact(runtime.admin(), "grantRole", ROLES["merchant"], account.address)
            runtime.start_merchant(merchant_id, account)
        enrolled += 1
    if enrolled:
        report(f"{enrolled} demo partners enrolled (keys in the partner keystore)")
    return enrolled
