"""A printed card with its holder's PIN at the terminal, and a pass number with its PIN for a
holder without card or phone.

A card token alone moves at most ``card_pin_limit`` (its on-chain ``amountCap``) in a Budget or
Uses scheme. Above that the cashier asks for the PIN; the service checks it and signs a fresh
short-lived token for this checkout (serial 0, ``token_lifetime_s``, no cap), which then serves
one checkout like any app token (the contract spends it). The same holds for a holder who gives
the pass number and the PIN at the counter.

Guessing:

- every wrong PIN counts against the pass: after :data:`MAX_PIN_FAILURES` in a row the PIN
  (not the card) is locked until the holder sets a new PIN on the holder page or staff unlock
  it; a right PIN resets the count;
- every wrong PIN counts against the terminal: more than :data:`TERMINAL_MAX_FAILURES` within
  :data:`TERMINAL_WINDOW_S` and the terminal gets ``429 card_pin_throttled`` for every PIN (a
  terminal trying one PIN over many passes);
- an unknown pass number, a pass without a PIN and a wrong PIN cost the same work (a hash check
  against a dummy) and answer the same ``card_pin_wrong``.

Counts and locks live in the database (``api_holder_pin``, ``api_pin_failure``), so every API
process sees them and a restart does not forget them.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Table, delete, func, insert, select
from starlette.concurrency import run_in_threadpool

from api import short_codes
from api.problems import ApiProblem
from api.runtime import Runtime
from api.services import fresh_expiry, verify_token
from api.store import HolderPin, PinFailure
from ledger import contract_errors as ce
from ledger import registry as reg
from ledger.secrets_hash import check_secret, hash_secret
from ledger.store.registry import PassRecord
from wallet import PassToken, SignedPassToken, decode_token_uri, encode_token_uri, sign_pass_token

__all__ = [
    "MAX_PIN_FAILURES",
    "TERMINAL_MAX_FAILURES",
    "TERMINAL_WINDOW_S",
    "checkout_token",
    "counter_token",
    "known_pass",
    "set_pin",
    "unlock_pin",
]

log = logging.getLogger(__name__)

MAX_PIN_FAILURES: Final = 5
TERMINAL_MAX_FAILURES: Final = 10
TERMINAL_WINDOW_S: Final = 600
_MIN_PIN_LENGTH: Final = 4

_FAILURES: Table = PinFailure.__table__  # type: ignore[attr-defined]


def _wrong() -> ApiProblem:
    return ApiProblem(
        403,
        "card_pin_wrong",
        "the PIN does not match this pass (or the pass has no PIN); nothing was redeemed",
    )


def _locked() -> ApiProblem:
    return ApiProblem(
        423,
        "card_pin_locked",
        f"the PIN of this pass is locked after {MAX_PIN_FAILURES} wrong entries; the holder "
        "sets a new PIN on the holder page, or municipal staff unlock it. The card itself still "
        "works below its limit",
    )


def _throttled(retry_after_s: int) -> ApiProblem:
    return ApiProblem(
        429,
        "card_pin_throttled",
        f"this terminal entered more than {TERMINAL_MAX_FAILURES} wrong PINs in "
        f"{TERMINAL_WINDOW_S // 60} minutes; try again in {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_terminal(runtime: Runtime, terminal: str) -> None:
    """429 while ``terminal`` has too many recent wrong PINs; old entries are dropped."""
    now = _now_ms()
    since = now - TERMINAL_WINDOW_S * 1000
    with runtime.store.db.engine.begin() as conn:
        conn.execute(delete(_FAILURES).where(_FAILURES.c.at_ms < since))
        count, oldest = conn.execute(
            select(func.count(), func.min(_FAILURES.c.at_ms)).where(
                _FAILURES.c.terminal == terminal, _FAILURES.c.at_ms >= since
            )
        ).one()
    if count >= TERMINAL_MAX_FAILURES:
        raise _throttled(max(1, (int(oldest) + TERMINAL_WINDOW_S * 1000 - now) // 1000 + 1))


def _pass_of(runtime: Runtime, subject: str) -> tuple[PassRecord, SignedPassToken | None]:
    """The pass a card token or a pass number names (``card_pin_wrong`` if none)."""
    registry = runtime.store.registry
    text = subject.strip()
    if text.lower().startswith("stadjerspas:"):
        signed = decode_token_uri(text)
        verify_token(runtime, signed)
        record = registry.find_pass_by_id(signed.token.pass_id)
        if record is None:
            raise _wrong()
        return record, signed
    try:
        return registry.pass_by_number(text), None
    except reg.RegistryError:
        return _unknown()


def _unknown() -> tuple[PassRecord, SignedPassToken | None]:
    check_secret("not a pin", None)  # the same work as a wrong PIN
    raise _wrong()


def _verify(runtime: Runtime, *, pass_number: str, pin: str, terminal: str) -> None:
    """Check ``pin`` for the pass; count and lock on a wrong one."""
    with runtime.store.session() as session:
        row = session.get(HolderPin, pass_number)
        if row is not None and row.locked_at is not None:
            raise _locked()
        if row is not None and check_secret(pin, row.pin_hash):
            if row.failed_attempts:
                row.failed_attempts = 0
                session.add(row)
                session.commit()
            return
        if row is None:
            check_secret(pin, None)
        else:
            row.failed_attempts += 1
            if row.failed_attempts >= MAX_PIN_FAILURES:
                row.locked_at = datetime.now(UTC)
                log.warning("a holder PIN was locked after %d wrong entries", MAX_PIN_FAILURES)
            session.add(row)
            session.commit()
    with runtime.store.db.engine.begin() as conn:
        conn.execute(insert(_FAILURES).values(terminal=terminal, at_ms=_now_ms()))
    if row is not None and row.locked_at is not None:
        raise _locked()
    raise _wrong()


def checkout_token(runtime: Runtime, *, subject: str, pin: str, terminal: str) -> str:
    """A fresh short-lived token for this checkout, once ``pin`` is right for the pass that
    ``subject`` (a card token URI or a pass number) names. A card that was replaced is refused
    as on chain. Blocking and balances are checked later, as for any token."""
    if len(pin) < _MIN_PIN_LENGTH or len(pin) > 64:
        raise ApiProblem(
            422,
            "card_pin_malformed",
            f"a PIN has {_MIN_PIN_LENGTH} to 64 characters, got {len(pin)}",
        )
    _check_terminal(runtime, terminal)
    record, card = _pass_of(runtime, subject)
    if card is not None and card.token.is_card:
        current = runtime.state.pass_state(card.token.pass_id).card_serial
        if card.token.serial != current:
            raise ce.RedemptionCardRevoked({"redemptionId": 0, "serial": card.token.serial})
    _verify(runtime, pass_number=record.pass_number, pin=pin, terminal=terminal)
    pass_id = bytes.fromhex(record.pass_id.removeprefix("0x"))
    signed = sign_pass_token(
        PassToken(
            pass_id=pass_id,
            serial=0,
            expiry=fresh_expiry(runtime, pass_id, runtime.settings.token_lifetime_s),
        ),
        domain=runtime.domain,
        private_key=runtime.keys.pass_signer.key,
    )
    return encode_token_uri(signed)


async def counter_token(runtime: Runtime, text: str, *, pin: str | None, terminal: str) -> str:
    """What a terminal sent, as the token to check: a token URI as it is, a short code as the
    token it stands for, and with a ``pin`` (a card token or a pass number) a fresh token for
    this checkout (:func:`checkout_token`, on a worker thread: the PIN hash takes ~40 ms)."""
    token = await short_codes.resolve_token(runtime, text, terminal=terminal)
    if pin is None:
        return token
    return await run_in_threadpool(
        checkout_token, runtime, subject=token, pin=pin, terminal=terminal
    )


def known_pass(runtime: Runtime, pass_number: str) -> str:
    """The registry's spelling of ``pass_number`` (404 ``pass_number_unknown`` if none)."""
    holder = runtime.store.holder(pass_number)
    if holder is None:
        raise ApiProblem(404, "pass_number_unknown", f"no holder has pass number {pass_number!r}")
    return holder.pass_number


def set_pin(runtime: Runtime, *, pass_number: str, pin: str) -> None:
    """The holder's new PIN; it also lifts a lock."""
    if len(pin) < _MIN_PIN_LENGTH or len(pin) > 64:
        raise ApiProblem(
            422, "pin_malformed", f"a PIN has {_MIN_PIN_LENGTH} to 64 characters, got {len(pin)}"
        )
    pin_hash = hash_secret(pin)
    with runtime.store.session() as session:
        row = session.get(HolderPin, pass_number) or HolderPin(
            pass_number=pass_number, pin_hash=pin_hash
        )
        row.pin_hash = pin_hash
        row.failed_attempts = 0
        row.locked_at = None
        row.updated_at = datetime.now(UTC)
        session.add(row)
        session.commit()


def unlock_pin(runtime: Runtime, *, pass_number: str) -> bool:
    """Lift a lock (staff); False if the pass has no PIN."""
    with runtime.store.session() as session:
        row = session.get(HolderPin, pass_number)
        if row is None:
            return False
        row.failed_attempts = 0
        row.locked_at = None
        row.updated_at = datetime.now(UTC)
        session.add(row)
        session.commit()
        return True
