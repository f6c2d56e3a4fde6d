"""Demo data for development: a municipality, three schemes, ~50 holders, three merchants.

Seeded once, on the first start, one transaction at a time through the issuer's relayer, so
each is stored in the outbox before it is sent (a node restored from older state gets the seed
back from the reconciler, as it gets every other transaction of the service).
Every step checks what is already there (registry rows, passes registered on chain, balances),
and a marker records completion, so a restart never seeds twice and an interrupted seed resumes.

Holders are enrolled through the registry (:class:`ledger.registry.Registry`) at postcodes of
the shipped Groningen sample, so each has a district (wijk); every fifth holder is a parent with
a child in the same household. Each gets pass ``GR0000001`` .. ``GR0000050`` (enrolment and pass
in one transaction). Merchants have sample KvK numbers, valid test IBANs and a location in
Groningen (fictional house numbers, ``.example`` websites); a merchant the registry already has
gets its demo location only if it has none (so an edit by staff stays).

On chain the holders appear only as pass ids (HMAC of the pass number under the pass's own
secret); their pass numbers, secrets and names stay in the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from ledger.client import UNLIMITED, SchemeKind, SchemeTerms
from ledger.passid import pass_id
from ledger.registry import MerchantLocation, Registry, merchant_location

if TYPE_CHECKING:
    from api.runtime import Runtime

__all__ = [
    "DEMO_HOLDER_COUNT",
    "DEMO_MERCHANTS",
    "DEMO_MERCHANT_NAMES",
    "DEMO_SCHEMES",
    "DemoMerchant",
    "DemoPlace",
    "DemoScheme",
    "demo_merchant",
    "demo_merchant_location",
    "demo_pass_number",
    "enrol_demo_holders",
    "locate_demo_merchants",
    "seed_demo",
]

log = logging.getLogger(__name__)

DEMO_HOLDER_COUNT = 50


@dataclass(frozen=True, slots=True)
class DemoPlace:
    street: str
    postcode: str
    town: str
    website: str | None = None
    opening_hours: str | None = None


@dataclass(frozen=True, slots=True)
class DemoMerchant:
    name: str
    kvk_number: str
    category: str
    iban: str | None
    place: DemoPlace | None = None


#: Merchant ``i`` is entry ``i - 1`` (and the i-th merchant key). Sample KvK numbers; the IBANs
#: are well-known valid test numbers (mod-97 checked), not real accounts; the streets are in
#: Groningen, the house numbers and websites made up.
DEMO_MERCHANTS = (
    DemoMerchant(
        "Zwembad Noorderbad",
        "01234567",
        "sport",
        "NL91ABNA0417164300",
        DemoPlace(
            "Kraneweg 90",
            "9718 JN",
            "Groningen",
            "https://noorderbad.example",
            "ma-vr 7:00-21:00\nza-zo 9:00-17:00",
        ),
    ),
    DemoMerchant(
        "Boekhandel Het Gulden Boek",
        "12345678",
        "culture",
        "NL20INGB0001234567",
        DemoPlace(
            "Oude Ebbingestraat 21",
            "9712 HB",
            "Groningen",
            None,
            "di-za 10:00-18:00\ndo tot 21:00",
        ),
    ),
    DemoMerchant(
        "Sportwinkel Stad",
        "23456789",
        "shop",
        "NL39RABO0300065264",
        DemoPlace("Herestraat 45", "9711 LC", "Groningen", "https://sportwinkelstad.example"),
    ),
)
DEMO_MERCHANT_NAMES = tuple(merchant.name for merchant in DEMO_MERCHANTS)
_LAST_NAMES = (
    "de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder",
    "de Groot", "Bos", "Vos", "Peters", "Hendriks", "Dijkstra", "Hoekstra", "Veenstra",
    "Kramer", "Postma", "Wiersma", "Zijlstra",
)  # fmt: skip
_FIRST_NAMES = (
    "Anouk", "Bram", "Daan", "Emma", "Fenna", "Gijs", "Hanna", "Ivo", "Jelle", "Julia",
    "Kees", "Lotte", "Maud", "Noah", "Olaf", "Pien", "Rens", "Sanne", "Tess", "Ties",
    "Vera", "Wout", "Yara", "Zoë", "Amira", "Bilal", "Chloé", "Dewi", "Ezra", "Fleur",
)  # fmt: skip
_YEAR_S = 365 * 24 * 3600
_MARKER = "demo.seeded"


@dataclass(frozen=True, slots=True)
class DemoScheme:
    name: str
    kind: SchemeKind
    per_holder: int  # issued to each holder: cents, uses, or UNLIMITED uses of a discount
    unit_value: int = 0
    discount_bps: int = 0
    reimburse_bps: int = 0
    per_redemption_cap: int = 0
    budget_cap: int = 0
    open_to_all_merchants: bool = True
    allowed_merchants: tuple[int, ...] = ()


DEMO_SCHEMES = (
    DemoScheme(
        name="Kindpakket (budget €150)",
        kind=SchemeKind.BUDGET,
        per_holder=15_000,
        budget_cap=DEMO_HOLDER_COUNT * 15_000 * 2,
    ),
    DemoScheme(
        name="Zwemmen (10 entrees)",
        kind=SchemeKind.USES,
        per_holder=10,
        unit_value=450,
        budget_cap=DEMO_HOLDER_COUNT * 10 * 450 * 2,
        open_to_all_merchants=False,
        allowed_merchants=(1,),
    ),
    DemoScheme(
        name="25% korting bij partners",
        kind=SchemeKind.DISCOUNT,
        per_holder=UNLIMITED,
        discount_bps=2_500,
        reimburse_bps=5_000,
        per_redemption_cap=2_500,
        budget_cap=500_000,
    ),
)


def demo_pass_number(index: int) -> str:
    """Pass number of demo holder ``index`` (1-based), e.g. ``GR0000001``."""
    return f"GR{index:07d}"


def demo_merchant(merchant_id: int) -> DemoMerchant:
    """Registry data of merchant ``merchant_id`` (a placeholder past the demo's three: KvK
    ``00000000`` and no IBAN, which the payouts report)."""
    if 1 <= merchant_id <= len(DEMO_MERCHANTS):
        return DEMO_MERCHANTS[merchant_id - 1]
    return DemoMerchant(f"Merchant {merchant_id}", "00000000", "other", None)


def demo_merchant_location(merchant_id: int) -> MerchantLocation | None:
    """The demo location of merchant ``merchant_id``, validated as the registry wants it (None
    past the demo's three)."""
    place = demo_merchant(merchant_id).place
    if place is None:
        return None
    return merchant_location(
        street=place.street,
        postcode=place.postcode,
        town=place.town,
        website=place.website,
        opening_hours=place.opening_hours,
    )


def locate_demo_merchants(registry: Registry) -> int:
    """Give each demo merchant (same id and name) without a location its demo location;
    returns how many got one now."""
    located = 0
    for merchant in registry.merchants():
        if merchant.id is None or merchant.street is not None:
            continue
        if demo_merchant(merchant.id).name != merchant.name:
            continue
        location = demo_merchant_location(merchant.id)
        if location is not None:
            registry.set_merchant_location(merchant.id, location)
            located += 1
    return located


#: Streets of Groningen for the demo holders' addresses (illustrative).
_STREETS = (
    "Herestraat",
    "Oude Ebbingestraat",
    "Nieuwe Boteringestraat",
    "Korreweg",
    "Paterswoldseweg",
    "Hoornsediep",
    "Vinkhuizenstraat",
    "Zonnelaan",
    "Peizerweg",
    "Helperzoom",
)


def enrol_demo_holders(registry: Registry, count: int = DEMO_HOLDER_COUNT) -> int:
    """Enrol the demo holders that are missing, each with its pass; returns how many now."""
    if not registry.postcodes():
        registry.load_sample_geography()
    postcodes = sorted(registry.postcodes())
    enrolled = 0
    for i in range(1, count + 1):
        number = demo_pass_number(i)
        if registry.find_pass(number) is not None:
            continue
        parent = i % 5 == 4 and i < count
        child = i % 5 == 0
        household = f"DEMO-HH-{(i if parent else i - 1):03d}" if parent or child else None
        with registry.transaction():
            holder = registry.enrol_holder(
                first_name=_FIRST_NAMES[(i - 1) % len(_FIRST_NAMES)],
                last_name=_LAST_NAMES[((i - 2) if child else (i - 1)) % len(_LAST_NAMES)],
                birth_date=date(2012 + i % 6, 1 + i % 12, 1 + i % 28)
                if child
                else date(1955 + (i * 7) % 45, 1 + (i * 5) % 12, 1 + (i * 3) % 28),
                postcode=postcodes[((i - 2) if child else (i - 1)) % len(postcodes)],
                household_reference=household,
                household_role="child" if child else "parent" if parent else None,
            )
            assert holder.id is not None
            # a postal address, so the demo can print activation letters (api.letters)
            holder.street = f"{_STREETS[(i - 1) % len(_STREETS)]} {1 + (i * 7) % 120}"
            holder.town = "Groningen"
            registry.issue_pass(holder.id, pass_number=number, activation_code=False)
        enrolled += 1
    return enrolled


def _chunks(items: list[bytes], size: int = 400) -> list[list[bytes]]:
    """``items`` in transactions of at most ``size`` (a block holds about 1,000 of them)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def seed_demo(runtime: Runtime, *, report: Callable[[str], None] | None = None) -> bool:
    """Seed the demo data unless done before; returns True if it seeded now."""
    say = report or (lambda message: log.info("%s", message))
    store, client, issuer = runtime.store, runtime.client, runtime.issuer()
    locate_demo_merchants(store.registry)  # also for a demo seeded before merchants had places
    if store.marker(_MARKER) is not None:
        return False

    count = runtime.settings.demo_holders
    enrol_demo_holders(store.registry, count)
    numbers = {demo_pass_number(i) for i in range(1, count + 1)}
    holders = sorted(
        (holder for holder in store.holders() if holder.pass_number in numbers),
        key=lambda holder: holder.pass_number,
    )
    pass_ids = [pass_id(pass_secret=h.pass_secret, pass_number=h.pass_number) for h in holders]

    labels = store.scheme_labels()
    scheme_ids: list[int] = []
    now = int(runtime.w3.eth.get_block("latest")["timestamp"])
    for scheme in DEMO_SCHEMES:
        existing = next((sid for sid, name in labels.items() if name == scheme.name), None)
        if existing is None:
            terms = SchemeTerms(
                kind=scheme.kind,
                valid_from=now - 60,
                valid_until=now + _YEAR_S,
                budget_cap=scheme.budget_cap * max(1, -(-count // DEMO_HOLDER_COUNT)),
                per_redemption_cap=scheme.per_redemption_cap,
                unit_value=scheme.unit_value,
                discount_bps=scheme.discount_bps,
                reimburse_bps=scheme.reimburse_bps,
                open_to_all_merchants=scheme.open_to_all_merchants,
            )
            receipt = runtime.transact(issuer, "createScheme", terms.as_tuple())
            (created,) = [e for e in client.receipt_events(receipt) if e.name == "SchemeCreated"]
            existing = int(created.args["schemeId"])
            store.set_scheme_label(existing, scheme.name)
        scheme_ids.append(existing)
        for merchant_id in scheme.allowed_merchants:
            merchant = runtime.keys.merchant(merchant_id)
            if (
                merchant is not None
                and not client.contract.functions.isMerchantAllowed(
                    existing, merchant.address
                ).call()
            ):
                runtime.transact(issuer, "setMerchantAllowed", existing, merchant.address, True)

    unregistered = [pid for pid in pass_ids if not client.pass_of(pid).registered]
    for chunk in _chunks(unregistered):
        runtime.transact(issuer, "registerPasses", chunk, [])

    for scheme, scheme_id in zip(DEMO_SCHEMES, scheme_ids, strict=True):
        empty = [pid for pid in pass_ids if client.balance_of(scheme_id, pid) == 0]
        for chunk in _chunks(empty):
            runtime.transact(
                issuer, "issueBatch", scheme_id, chunk, [scheme.per_holder] * len(chunk)
            )

    store.set_marker(_MARKER)
    say(
        f"demo data seeded: {len(holders)} holders ({holders[0].pass_number} .. "
        f"{holders[-1].pass_number}), {len(scheme_ids)} schemes, "
        f"{len(runtime.keys.merchants)} merchants"
    )
    return True
