"""Demo data for development: a municipality, three schemes, ~50 holders, three merchants.

Seeded once, on the first start, single-threaded with the issuer key (before the relayers start).
Every step checks what is already there (store rows, passes registered on chain, balances), and a
marker records completion, so a restart never seeds twice and an interrupted seed resumes.

On chain the holders appear only as pass ids (HMAC of the pass number under the holder's own
secret); their pass numbers, secrets and first names stay in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from api.store import Holder
from ledger.client import UNLIMITED, SchemeKind, SchemeTerms
from ledger.passid import new_pass_secret, pass_id

if TYPE_CHECKING:
    from api.runtime import Runtime

__all__ = [
    "DEMO_HOLDER_COUNT",
    "DEMO_MERCHANT_NAMES",
    "DEMO_SCHEMES",
    "DemoScheme",
    "demo_pass_number",
    "seed_demo",
]

log = logging.getLogger(__name__)

DEMO_HOLDER_COUNT = 50
DEMO_MERCHANT_NAMES = (
    "Zwembad Noorderbad",
    "Boekhandel Het Gulden Boek",
    "Sportwinkel Stad",
)
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


def seed_demo(runtime: Runtime, *, report: Callable[[str], None] | None = None) -> bool:
    """Seed the demo data unless done before; returns True if it seeded now."""
    say = report or (lambda message: log.info("%s", message))
    store, client, issuer = runtime.store, runtime.client, runtime.keys.issuer
    if store.marker(_MARKER) is not None:
        return False

    if store.holder_count() == 0:
        store.add_holders(
            [
                Holder(
                    pass_number=demo_pass_number(i),
                    first_name=_FIRST_NAMES[(i - 1) % len(_FIRST_NAMES)],
                    pass_secret=new_pass_secret(),
                )
                for i in range(1, DEMO_HOLDER_COUNT + 1)
            ]
        )
    holders = store.holders()
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
                budget_cap=scheme.budget_cap,
                per_redemption_cap=scheme.per_redemption_cap,
                unit_value=scheme.unit_value,
                discount_bps=scheme.discount_bps,
                reimburse_bps=scheme.reimburse_bps,
                open_to_all_merchants=scheme.open_to_all_merchants,
            )
            result = client.transact(issuer, "createScheme", terms.as_tuple())
            existing = int(result.named("SchemeCreated")[0].args["schemeId"])
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
                client.transact(issuer, "setMerchantAllowed", existing, merchant.address, True)

    unregistered = [pid for pid in pass_ids if not client.pass_of(pid).registered]
    if unregistered:
        client.transact(issuer, "registerPasses", unregistered)

    for scheme, scheme_id in zip(DEMO_SCHEMES, scheme_ids, strict=True):
        empty = [pid for pid in pass_ids if client.balance_of(scheme_id, pid) == 0]
        if empty:
            client.transact(
                issuer, "issueBatch", scheme_id, empty, [scheme.per_holder] * len(empty)
            )

    store.set_marker(_MARKER)
    say(
        f"demo data seeded: {len(holders)} holders ({holders[0].pass_number} .. "
        f"{holders[-1].pass_number}), {len(scheme_ids)} schemes, "
        f"{len(runtime.keys.merchants)} merchants"
    )
    return True
