"""Holder routes: the pass token (as text or a QR image) and the balances."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from api import services
from api.deps import HolderAuth, RuntimeDep, SettingsDep
from api.problems import problem_responses
from api.schemas import BalancesOut, PassTokenOut
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
            "content": {"image/png": {}, "image/svg+xml": {}},
            "description": "The token as JSON, or its QR code with `?format=png|svg`.",
        },
        **problem_responses(_UNAUTHORIZED, _UNKNOWN),
    },
)
def pass_token(
    pass_number: PassNumber,
    runtime: RuntimeDep,
    settings: SettingsDep,
    format: Annotated[Literal["json", "png", "svg"], Query()] = "json",
) -> PassTokenOut | Response:
    """Signed by the municipality's pass-signer key for this chain and ledger contract; valid
    for ``STADJERSPAS_TOKEN_LIFETIME_S`` seconds (``expires_at``)."""
    token = services.make_pass_token(runtime, settings, pass_number)
    headers = {"Cache-Control": "no-store", "X-Token-Expires-At": str(token.expires_at)}
    if format == "png":
        return Response(render_png(token.token_uri), media_type="image/png", headers=headers)
    if format == "svg":
        return Response(render_svg(token.token_uri), media_type="image/svg+xml", headers=headers)
    return token


@router.get(
    "/passes/{pass_number}/balances",
    summary="What the pass is entitled to, per scheme",
    responses=problem_responses(_UNAUTHORIZED, _UNKNOWN),
)
def pass_balances(pass_number: PassNumber, runtime: RuntimeDep) -> BalancesOut:
    """Balances read from the chain: cents for budgets, uses otherwise (``unlimited`` offers)."""
    return services.balances(runtime, pass_number)
