"""Holder routes: the pass token (JSON, raw text or a QR image), balances with validity dates,
history, and the catalogue of offers with where to use them.

Every route has ``{pass_number}`` in its path and the router's ``HolderAuth`` dependency: a
holder reaches only their own pass; another pass answers exactly like an unknown one (404
``pass_number_unknown``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import PlainTextResponse

from api import card_pins, holder_services, services, short_codes
from api.deps import HolderAuth, RuntimeDep, SettingsDep
from api.holder_services import HistoryOut, HolderBalancesOut, OfferCatalogueOut
from api.problems import problem_responses
from api.schemas import BalancesOut, PassTokenOut, PinIn
from wallet import render_png, render_svg

router = APIRouter(prefix="/holder", tags=["holder"], dependencies=[HolderAuth])

PassNumber = Annotated[
    str,
    Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$", examples=["GR0000001"]),
]
_UNKNOWN = (404, "pass_number_unknown", "no holder has pass number 'GR9999999'")
_UNAUTHORIZED = (401, "unauthorized", "this endpoint needs the holder bearer token")


@router.get(
    "/passes/{pass_number}/token",
    summary="A short-lived pass token (JSON, or a QR code as PNG or SVG)",
    response_model=PassTokenOut,
    responses={
        200: {
            "content": {
                "image/png": {},
                "image/svg+xml": {},
                "text/plain": {"example": "stadjerspas:1:AAAAAAAAelnvpc..."},
            },
            "description": "The token as JSON, its QR code with `?format=png|svg`, or the raw "
            "token URI with `?format=text`.",
        },
        **problem_responses(_UNAUTHORIZED, _UNKNOWN),
    },
)
def pass_token(
    pass_number: PassNumber,
    runtime: RuntimeDep,
    settings: SettingsDep,
    format: Annotated[Literal["json", "png", "svg", "text"], Query()] = "json",
    short_code: Annotated[
        bool, Query(description="Also issue a short code for the token (``X-Short-Code``).")
    ] = False,
) -> PassTokenOut | Response:
    """Signed by the municipality's pass-signer key for this chain and ledger contract; valid
    for ``STADJERSPAS_TOKEN_LIFETIME_S`` seconds (``expires_at``).

    With ``short_code=true`` the answer also carries a short code (``short_code`` in JSON, the
    ``X-Short-Code`` header otherwise) that a terminal may type instead of the token URI: it
    stands for this token only, until it expires."""
    token = services.make_pass_token(runtime, settings, pass_number)
    headers = {"Cache-Control": "no-store", "X-Token-Expires-At": str(token.expires_at)}
    if short_code:
        code = short_codes.issue(runtime, token.token_uri, token.expires_at)
        token.short_code = short_codes.display(code)
        headers["X-Short-Code"] = token.short_code
    if format == "png":
        return Response(render_png(token.token_uri), media_type="image/png", headers=headers)
    if format == "svg":
        return Response(render_svg(token.token_uri), media_type="image/svg+xml", headers=headers)
    if format == "text":
        return PlainTextResponse(token.token_uri, headers=headers)
    return token


@router.get(
    "/passes/{pass_number}/balances",
    summary="What the pass is entitled to, per scheme",
    responses=problem_responses(_UNAUTHORIZED, _UNKNOWN),
)
def pass_balances(pass_number: PassNumber, runtime: RuntimeDep) -> BalancesOut:
    """Balances read from the chain: cents for budgets, uses otherwise (``unlimited`` offers)."""
    return services.balances(runtime, pass_number)


@router.get(
    "/passes/{pass_number}/entitlements",
    summary="Balances with their validity and expiry dates",
    responses=problem_responses(_UNAUTHORIZED, _UNKNOWN),
)
def pass_entitlements(pass_number: PassNumber, runtime: RuntimeDep) -> HolderBalancesOut:
    """Schemes the pass has something left in, read from the chain, with the scheme's validity
    window (``valid_from`` .. ``valid_until``, and ``expires_on`` as a date)."""
    return holder_services.balances_with_validity(runtime, pass_number)


@router.get(
    "/passes/{pass_number}/history",
    summary="The pass's redemptions and reversals, newest first",
    responses=problem_responses(_UNAUTHORIZED, _UNKNOWN),
)
def pass_history(
    pass_number: PassNumber,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000, description="Skip this many newer items.")] = 0,
) -> HistoryOut:
    """From the chain index when the indexer runs (``source: index``), else from this
    service's own redemption records (``source: api_records``). Paged: pass the answer's
    ``next_offset`` as ``offset`` for the next, older page."""
    return holder_services.history(runtime, pass_number, limit=limit, offset=offset)


@router.get(
    "/passes/{pass_number}/offers",
    summary="Offers for this pass and where to use them",
    responses=problem_responses(_UNAUTHORIZED, _UNKNOWN),
)
def pass_offers(pass_number: PassNumber, runtime: RuntimeDep) -> OfferCatalogueOut:
    """Discount schemes and the schemes the pass holds, not yet expired, each with the active
    merchants that accept it (open to all merchants, or on the scheme's allow-list)."""
    return holder_services.offer_catalogue(runtime, pass_number)


@router.put(
    "/passes/{pass_number}/pin",
    status_code=204,
    summary="Set a new PIN (it also lifts a PIN locked by wrong entries)",
    response_class=Response,
    responses=problem_responses(
        _UNAUTHORIZED, _UNKNOWN, (422, "validation_failed", "pin: at least 4 characters")
    ),
)
def set_pin(pass_number: PassNumber, body: PinIn, runtime: RuntimeDep) -> Response:
    """The holder chooses the PIN a terminal asks for above a printed card's limit, or with the
    pass number alone. Wrong entries at terminals lock it; setting a new one lifts the lock."""
    card_pins.set_pin(runtime, pass_number=card_pins.known_pass(runtime, pass_number), pin=body.pin)
    return Response(status_code=204)
