"""Short codes (api/short_codes.py) on the real app: the holder's token with its code, the code
typed at a terminal (any case, spaces and dashes) for a scan and a redemption, unknown and
expired codes, the guessing throttle per terminal, what the table holds, and collisions."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api import short_codes
from api.auth import dev_terminal_id
from api.problems import ApiProblem
from api.runtime import Runtime
from api.store import ShortCode, ShortCodeMiss
from tests.api.conftest import assert_problem as _problem
from tests.api.conftest import holder, merchant, signed_uri
from tests.api.conftest import holder_pass_id as _pid

PASS = "GR0000027"
OTHER_PASS = "GR0000028"
CODES = ShortCode.__table__  # type: ignore[attr-defined]
MISSES = ShortCodeMiss.__table__  # type: ignore[attr-defined]


def _holder_token(client: TestClient, pass_number: str) -> dict[str, Any]:
    response = client.get(
        f"/holder/passes/{pass_number}/token",
        params={"short_code": "true"},
        headers=holder(client, pass_number),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _typed(code: str) -> str:
    """How a cashier might type ``K7QX-M4PZ``: ``k7q xm4pz``."""
    compact = code.replace("-", "").lower()
    return f"{compact[:3]} {compact[3:]}"


def _clear_misses(runtime: Runtime, terminal: str) -> None:
    with runtime.store.db.engine.begin() as conn:
        conn.execute(MISSES.delete().where(MISSES.c.terminal == terminal))


# -- the code itself ------------------------------------------------------------------------------


def test_alphabet_has_no_look_alikes() -> None:
    assert len(short_codes.ALPHABET) == len(set(short_codes.ALPHABET)) == 30
    assert not set("01OILU") & set(short_codes.ALPHABET)
    assert short_codes.LENGTH == 8
    codes = {short_codes.generate() for _ in range(2000)}
    assert len(codes) == 2000  # 30**8 values: no repeats in 2,000 draws
    assert all(len(c) == 8 and set(c) <= set(short_codes.ALPHABET) for c in codes)
    assert set("".join(codes)) == set(short_codes.ALPHABET)  # every character is drawn


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("K7QX-M4PZ", "K7QXM4PZ"),
        ("k7qx-m4pz", "K7QXM4PZ"),
        ("k7q xm4pz", "K7QXM4PZ"),
        ("  K7QX \u2013 M4PZ \n", "K7QXM4PZ"),
        ("K-7-Q-X-M-4-P-Z", "K7QXM4PZ"),
        ("K7QXM4P", None),  # too short
        ("K7QXM4PZZ", None),  # too long
        ("K7QX-M4P0", None),  # 0, O, 1, I, L and U never occur in a code
        ("K7QX-M4PO", None),
        ("K7QX-M41Z", None),
        ("K7QX-MIPZ", None),
        ("K7QX-MLPZ", None),
        ("K7QX-MUPZ", None),
        ("stadjerspas:1:AAAA", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_normalise(typed: str, code: str | None) -> None:
    assert short_codes.normalise(typed) == code


def test_display_and_spoken() -> None:
    assert short_codes.display("K7QXM4PZ") == "K7QX-M4PZ"
    assert short_codes.spoken("K7QXM4PZ") == "K 7 Q X, M 4 P Z"
    assert short_codes.normalise(short_codes.display("K7QXM4PZ")) == "K7QXM4PZ"


# -- holder and terminal through the API ----------------------------------------------------------


def test_holder_token_with_a_short_code_scans_and_redeems(
    client: TestClient, runtime: Runtime
) -> None:
    token = _holder_token(client, PASS)
    code = token["short_code"]
    assert short_codes.normalise(code) is not None
    assert code == short_codes.display(short_codes.normalise(code) or "")
    # without asking, no code is issued
    plain = client.get(f"/holder/passes/{PASS}/token", headers=holder(client, PASS)).json()
    assert plain["short_code"] is None

    by_uri = client.post(
        "/merchant/scan", json={"token": token["token_uri"]}, headers=merchant(client, 1)
    )
    by_code = client.post(
        "/merchant/scan", json={"token": _typed(code)}, headers=merchant(client, 1)
    )
    assert by_code.status_code == 200, by_code.text
    assert by_code.json() == by_uri.json()
    assert by_code.json()["token_expires_at"] == token["expires_at"]
    assert by_code.json()["status"] == "active"

    budget = next(r for r in by_code.json()["redeemable"] if r["kind"] == "budget")
    before = runtime.client.balance_of(budget["scheme_id"], _pid(runtime, PASS))
    redeemed = client.post(
        "/merchant/redemptions",
        json={"token": code.lower(), "scheme_id": budget["scheme_id"], "amount": 125},
        headers=merchant(client, 1, f"short-code-{uuid.uuid4()}"),
    )
    assert redeemed.status_code == 201, redeemed.text
    assert redeemed.json()["debited"] == 125
    after = runtime.client.balance_of(budget["scheme_id"], _pid(runtime, PASS))
    assert after == before - 125
    # the record keeps the token the code stood for, never the code
    record = runtime.store.redemption_by_id(redeemed.json()["redemption_id"])
    assert record is not None
    assert record.token_uri == token["token_uri"]


def test_png_and_svg_carry_the_code_in_a_header(client: TestClient) -> None:
    for fmt in ("png", "svg", "text"):
        response = client.get(
            f"/holder/passes/{PASS}/token",
            params={"format": fmt, "short_code": "true"},
            headers=holder(client, PASS),
        )
        assert response.status_code == 200
        assert short_codes.normalise(response.headers["X-Short-Code"]) is not None
        if fmt == "text":
            resolved = client.post(
                "/merchant/scan",
                json={"token": response.headers["X-Short-Code"]},
                headers=merchant(client, 2),
            )
            assert resolved.status_code == 200, resolved.text
            assert resolved.json()["token_expires_at"] == int(
                response.headers["X-Token-Expires-At"]
            )


def test_each_code_resolves_only_to_its_own_token(client: TestClient, runtime: Runtime) -> None:
    first, second = _holder_token(client, PASS), _holder_token(client, OTHER_PASS)
    assert first["short_code"] != second["short_code"]
    terminal = dev_terminal_id(2)
    assert (
        short_codes.resolve(runtime, first["short_code"], terminal=terminal) == (first["token_uri"])
    )
    assert (
        short_codes.resolve(runtime, _typed(second["short_code"]), terminal=terminal)
        == (second["token_uri"])
    )
    # a token URI (or anything that is not a code) goes on unchanged, and is not a miss
    assert short_codes.resolve(runtime, first["token_uri"], terminal=terminal) == first["token_uri"]
    assert short_codes.resolve(runtime, "hello", terminal=terminal) == "hello"


def test_unknown_code_is_a_clear_problem(client: TestClient, runtime: Runtime) -> None:
    terminal = dev_terminal_id(2)
    try:
        while True:  # a code that is not live (a live one is 1 in ~10**10)
            guess = short_codes.display(short_codes.generate())
            lookup, _ = short_codes._keys(runtime, short_codes.normalise(guess) or "")
            with runtime.store.db.engine.connect() as conn:
                if conn.execute(select(CODES).where(CODES.c.lookup == lookup)).first() is None:
                    break
        for path, body in (
            ("/merchant/scan", {"token": guess}),
            ("/merchant/redemptions", {"token": guess, "scheme_id": 1, "amount": 1}),
        ):
            problem = _problem(
                client.post(path, json=body, headers=merchant(client, 2, str(uuid.uuid4()))),
                422,
                "short_code_unknown",
            )
            assert guess in problem["detail"]
        # something that is not a code is still refused as a token
        _problem(
            client.post("/merchant/scan", json={"token": "K7QX-M4P0"}, headers=merchant(client, 2)),
            400,
            "token_malformed",
        )
    finally:
        _clear_misses(runtime, terminal)


def test_expired_code_no_longer_resolves_and_its_row_is_deleted(runtime: Runtime) -> None:
    now = float(int(time.time()))  # whole seconds: exact milliseconds below
    uri = signed_uri(runtime, _pid(runtime, PASS), expiry=int(now) + 30)
    code = short_codes.issue(runtime, uri, int(now) + 30, now=now)
    terminal = f"test-expiry-{uuid.uuid4().hex[:8]}"
    assert short_codes.resolve(runtime, code, terminal=terminal, now=now + 30) == uri
    with pytest.raises(ApiProblem) as refused:
        short_codes.resolve(runtime, code, terminal=terminal, now=now + 31)
    assert (refused.value.status, refused.value.code) == (422, "short_code_unknown")

    lookup, _ = short_codes._keys(runtime, code)
    with runtime.store.db.engine.connect() as conn:
        assert conn.execute(select(CODES).where(CODES.c.lookup == lookup)).first() is not None
    # the next code issued after its expiry deletes it (and every other expired row)
    later = short_codes.issue(runtime, uri, int(now) + 200, now=now + 31)
    with runtime.store.db.engine.connect() as conn:
        assert conn.execute(select(CODES).where(CODES.c.lookup == lookup)).first() is None
        assert conn.execute(select(CODES).where(CODES.c.expires_at < now + 31)).first() is None
    assert short_codes.resolve(runtime, later, terminal=terminal, now=now + 31) == uri
    _clear_misses(runtime, terminal)


def test_the_table_alone_neither_lists_codes_nor_holds_tokens(runtime: Runtime) -> None:
    now = float(int(time.time()))  # whole seconds: exact milliseconds below
    uri = signed_uri(runtime, _pid(runtime, OTHER_PASS), expiry=int(now) + 60)
    code = short_codes.issue(runtime, uri, int(now) + 60, now=now)
    lookup, _ = short_codes._keys(runtime, code)
    with runtime.store.db.engine.connect() as conn:
        rows = conn.execute(select(CODES)).all()
    row = next(r for r in rows if r.lookup == lookup)
    for r in rows:
        assert code not in r.lookup.upper()
        assert uri.encode() not in bytes(r.sealed)
        assert b"stadjerspas:" not in bytes(r.sealed)
    assert len(row.lookup) == 64  # a keyed hash (hex), not the code
    assert int(row.lookup, 16) >= 0
    assert row.expires_at == int(now) + 60
    # the row opens only with its own code
    other = next(c for c in iter(short_codes.generate, None) if c != code)
    _, wrong_key = short_codes._keys(runtime, other)
    assert short_codes._unseal(wrong_key, lookup, bytes(row.sealed)) is None


def test_a_colliding_code_is_drawn_again(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    now = float(int(time.time()))  # whole seconds: exact milliseconds below
    uri_a = signed_uri(runtime, _pid(runtime, PASS), expiry=int(now) + 60)
    uri_b = signed_uri(runtime, _pid(runtime, OTHER_PASS), expiry=int(now) + 60)
    taken = short_codes.issue(runtime, uri_a, int(now) + 60, now=now)
    fresh = next(c for c in iter(short_codes.generate, None) if c != taken)
    draws = iter([taken, taken, fresh])
    monkeypatch.setattr(short_codes, "generate", lambda: next(draws))
    assert short_codes.issue(runtime, uri_b, int(now) + 60, now=now) == fresh
    terminal = f"test-collide-{uuid.uuid4().hex[:8]}"
    assert short_codes.resolve(runtime, taken, terminal=terminal, now=now) == uri_a
    assert short_codes.resolve(runtime, fresh, terminal=terminal, now=now) == uri_b
    # nothing but collisions: a clear 503 after a few draws, nothing stored
    monkeypatch.setattr(short_codes, "generate", lambda: taken)
    with pytest.raises(ApiProblem) as refused:
        short_codes.issue(runtime, uri_b, int(now) + 60, now=now)
    assert (refused.value.status, refused.value.code) == (503, "short_code_unavailable")
    assert short_codes.resolve(runtime, taken, terminal=terminal, now=now) == uri_a


# -- guessing -----------------------------------------------------------------------------------


def test_guessing_is_throttled_per_terminal(runtime: Runtime) -> None:
    now = float(int(time.time()))  # whole seconds: exact milliseconds below
    uri = signed_uri(runtime, _pid(runtime, PASS), expiry=int(now) + 120)
    right = short_codes.issue(runtime, uri, int(now) + 120, now=now)
    guesser = f"test-guesser-{uuid.uuid4().hex[:8]}"
    other = f"test-other-{uuid.uuid4().hex[:8]}"
    wrong = [
        next(c for c in iter(short_codes.generate, None) if c != right)
    ] * short_codes.MISS_LIMIT
    try:
        for i, guess in enumerate(wrong):
            with pytest.raises(ApiProblem) as missed:
                short_codes.resolve(runtime, guess, terminal=guesser, now=now + i)
            assert missed.value.code == "short_code_unknown"
        # the 11th attempt within the minute is refused, even with the right code
        with pytest.raises(ApiProblem) as throttled:
            short_codes.resolve(runtime, right, terminal=guesser, now=now + 10)
        assert (throttled.value.status, throttled.value.code) == (429, "short_code_throttled")
        assert throttled.value.headers["Retry-After"] == "50"  # the first miss leaves at now+60
        # a token URI still works for that terminal; another terminal is not throttled
        assert short_codes.resolve(runtime, uri, terminal=guesser, now=now + 10) == uri
        assert short_codes.resolve(runtime, right, terminal=other, now=now + 10) == uri
        # once the oldest miss is a minute old, one more try is allowed
        assert short_codes.resolve(runtime, right, terminal=guesser, now=now + 60) == uri
        with pytest.raises(ApiProblem) as again:
            short_codes.resolve(runtime, wrong[0], terminal=guesser, now=now + 60)
        assert again.value.code == "short_code_unknown"
        with pytest.raises(ApiProblem) as again:
            short_codes.resolve(runtime, right, terminal=guesser, now=now + 60.5)
        assert again.value.code == "short_code_throttled"
    finally:
        _clear_misses(runtime, guesser)


def test_guessing_through_the_api_gets_429(client: TestClient, runtime: Runtime) -> None:
    token = _holder_token(client, OTHER_PASS)
    terminal = dev_terminal_id(3)
    headers = merchant(client, 3)
    wrong = next(
        short_codes.display(c)
        for c in iter(short_codes.generate, None)
        if c != short_codes.normalise(token["short_code"])
    )
    try:
        for _ in range(short_codes.MISS_LIMIT):
            _problem(
                client.post("/merchant/scan", json={"token": wrong}, headers=headers),
                422,
                "short_code_unknown",
            )
        response = client.post(
            "/merchant/scan", json={"token": token["short_code"]}, headers=headers
        )
        _problem(response, 429, "short_code_throttled")
        assert 1 <= int(response.headers["Retry-After"]) <= short_codes.MISS_WINDOW_S
        # the QR (token URI) still works at that terminal
        scanned = client.post("/merchant/scan", json={"token": token["token_uri"]}, headers=headers)
        assert scanned.status_code == 200, scanned.text
    finally:
        _clear_misses(runtime, terminal)
    response = client.post("/merchant/scan", json={"token": token["short_code"]}, headers=headers)
    assert response.status_code == 200, response.text
