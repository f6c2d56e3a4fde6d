"""No personal data in the service's logs: a whole scenario in a real ``stadjerspas up`` process
(embedded anvil, SQLite, demo data, ``--log-level debug``), then every line it printed, stdout and
stderr, from every logger, uvicorn's included, is searched for every registry value.

The values come from the registry the service kept (the personal columns the export test names,
``tests.ledger.test_export.PERSONAL_COLUMNS``, plus merchants' street addresses), the tokens the
scenario was given, and the client IP. Shapes are searched too: anything that looks like a pass
number, IBAN, e-mail address or query string is a hit even if the registry never held it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
import pytest
from sqlalchemy import MetaData, create_engine, select

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.auth import DEV_STAFF, dev_terminal_id, dev_terminal_secret
from api.main import create_app
from api.runtime import Runtime
from ledger.store.db import default_sqlite_url
from tests.api.conftest import PROJECT_ROOT
from tests.ledger.test_export import PERSONAL_COLUMNS

STARTUP_TIMEOUT_S = 180.0
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
#: Personal columns besides the export test's: where a merchant (perhaps a sole trader) is.
ADDRESS_COLUMNS = {"registry_merchant": {"street", "postcode"}}
#: Secrets and digests: searched for, but they are not text anyone types.
HEX_COLUMNS = {"pass_secret"}
#: Shapes that must not appear at all.
SHAPES = {
    "pass number": re.compile(r"(?i)(?<![A-Za-z0-9])GR\d{7}(?![0-9])"),
    "IBAN": re.compile(r"\b[A-Z]{2}\d{2} ?[A-Z]{4}(?: ?\d{4}){2,}"),
    "e-mail": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "query string": re.compile(r"\?(?:q|format|name|token|x)="),
    "pass token": re.compile(r"stadjerspas:1:"),
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}"),
}
HOLDER = {
    "first_name": "Wubbien",
    "last_name": "Oosterhuis-Klaassens",
    "birth_date": "1977-08-23",
    "postcode": "9711AA",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    base_url: str
    port: int
    anvil_port: int
    var_dir: Path
    out: Path
    err: Path
    proc: subprocess.Popen[bytes]
    #: Every secret the scenario was handed (bearer tokens, token URIs, codes).
    secrets: set[str] = field(default_factory=set)

    def lines(self) -> list[str]:
        return [
            line
            for path in (self.out, self.err)
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        ]


def _executable() -> list[str]:
    script = Path(sys.executable).with_name("stadjerspas")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from api.cli import app; app()"]


@contextlib.contextmanager
def _service(tmp: Path) -> Iterator[Service]:
    port, anvil_port = _free_port(), _free_port()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("STADJERSPAS_")
    } | {
        "STADJERSPAS_ENV": "development",
        "STADJERSPAS_VAR_DIR": str(tmp / "var"),
        "STADJERSPAS_BUILD_DIR": str(PROJECT_ROOT / "var" / "build"),
        "STADJERSPAS_HOST": "127.0.0.1",
        "STADJERSPAS_PORT": str(port),
        "STADJERSPAS_ANVIL_PORT": str(anvil_port),
        "COLUMNS": "200",
    }
    out, err = tmp / "stdout.log", tmp / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*_executable(), "up", "--log-level", "debug"],
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    service = Service(f"http://127.0.0.1:{port}", port, anvil_port, tmp / "var", out, err, proc)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert proc.poll() is None, "\n".join(service.lines()[-20:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{service.base_url}/health", timeout=2.0).status_code == 200:
                    break
            assert time.monotonic() < deadline, "\n".join(service.lines()[-20:])
            time.sleep(0.25)
        yield service
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _bearer(svc: Service, client: httpx.Client, body: dict[str, str]) -> dict[str, str]:
    response = client.post("/auth/token", json=body)
    assert response.status_code == 200, response.text
    token = str(response.json()["access_token"])
    svc.secrets.add(token)
    return {"Authorization": f"Bearer {token}"}


def _web_login(client: httpx.Client, path: str, username: str, password: str) -> None:
    page = client.get(path)
    match = CSRF.search(page.text)
    assert match is not None
    response = client.post(
        path, data={"username": username, "password": password, "csrf": match.group(1)}
    )
    assert response.status_code == 303, response.text


def _scenario(svc: Service) -> None:
    """Enrol, issue, fund, the holder's page, token and card, a search by name, scan and redeem,
    a 404 and a 422 with a pass number in the path, and an invalid HTTP request."""
    with httpx.Client(base_url=svc.base_url, timeout=60.0) as api:
        admin = _bearer(
            svc, api, {"kind": "staff", "username": "admin", "password": DEV_STAFF["admin"][1]}
        )
        issuer = _bearer(
            svc, api, {"kind": "staff", "username": "issuer", "password": DEV_STAFF["issuer"][1]}
        )
        enrolled = api.post("/admin/holders", json=HOLDER, headers=admin)
        assert enrolled.status_code == 201, enrolled.text
        holder_id = enrolled.json()["id"]
        issued = api.post(f"/admin/holders/{holder_id}/passes", headers=issuer)
        assert issued.status_code == 201, issued.text
        number, code = issued.json()["pass_number"], issued.json()["activation_code"]
        svc.secrets.add(code)
        funded = api.post(
            "/admin/entitlements",
            json={"pass_number": number, "scheme_id": 1, "amount": 2_500},
            headers=admin,
        )
        assert funded.status_code == 201, funded.text
        assert api.get(f"/admin/holders/{holder_id}", headers=admin).status_code == 200
        carded = api.post(f"/admin/passes/{number}/cards", headers=issuer)
        assert carded.status_code in (200, 201), carded.text
        card = api.get(f"/admin/passes/{number}/card.png", headers=issuer)
        assert card.status_code == 200
        assert card.content.startswith(b"\x89PNG")

        # the holder: API and web page
        holder = _bearer(svc, api, {"kind": "holder", "username": number, "password": code})
        token = api.get(f"/holder/passes/{number}/token?format=json", headers=holder)
        assert token.status_code == 200, token.text
        uri = str(token.json()["token_uri"])
        svc.secrets.add(uri)
        for part in ("balances", "history", "entitlements", "offers"):
            got = api.get(f"/holder/passes/{number}/{part}", headers=holder)
            assert got.status_code == 200, (part, got.text)

        # the merchant: scan and redeem
        login = {"username": dev_terminal_id(1), "password": dev_terminal_secret(1)}
        terminal = _bearer(svc, api, {"kind": "terminal", **login})
        scanned = api.post("/merchant/scan", json={"token": uri}, headers=terminal)
        assert scanned.status_code == 200, scanned.text
        redeemed = api.post(
            "/merchant/redemptions",
            json={"token": uri, "scheme_id": 1, "amount": 500},
            headers={**terminal, "Idempotency-Key": "log-privacy-1"},
        )
        assert redeemed.status_code == 201, redeemed.text

        # a 404 and a 422 with a pass number (and a name) in the path and the query
        unknown = api.get(
            f"/holder/passes/{number}X/balances?name={HOLDER['last_name']}", headers=holder
        )
        assert unknown.status_code in (403, 404), unknown.text
        unmatched = api.get(f"/nothing/{number}?q={HOLDER['last_name']}")
        assert unmatched.status_code == 404
        invalid = api.get(f"/admin/holders/{number}?q={HOLDER['first_name']}", headers=admin)
        assert invalid.status_code == 422, invalid.text
        too_long = api.get(f"/admin/web/passes/{number}{'9' * 30}/card.png")
        assert too_long.status_code == 422

    with httpx.Client(base_url=svc.base_url, timeout=60.0) as web:
        _web_login(web, "/holder/login", number, code)
        page = web.get("/holder")
        assert page.status_code == 200
        assert web.get("/holder/qr.png").content.startswith(b"\x89PNG")
        svc.secrets.update(web.cookies.values())

    with httpx.Client(base_url=svc.base_url, timeout=60.0) as web:
        _web_login(web, "/admin/login?lang=en", "admin", DEV_STAFF["admin"][1])
        form = web.get("/admin/web/holders")
        match = CSRF.search(form.text)
        assert match is not None
        found = web.post(
            "/admin/web/holders", data={"csrf": match.group(1), "q": HOLDER["last_name"]}
        )
        assert found.status_code == 200
        assert HOLDER["last_name"] in found.text
        assert f'id="pass-{number}"' in found.text
        png = web.get(f"/admin/web/passes/{number}/card.png")
        assert png.status_code == 200
        svc.secrets.update(web.cookies.values())

    # not HTTP at all: uvicorn answers 400 and logs "Invalid HTTP request received."
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as raw:
        raw.sendall(
            f"GET /holder/passes/{number}?q={HOLDER['last_name']} HTTP/1.1\r\n"
            f"Host: {HOLDER['first_name']}\r\nbroken header line\r\n\r\n".encode()
        )
        assert b"400" in raw.recv(1024)


def _needles(value: object) -> set[str]:
    """The ways a registry value can be written."""
    if value is None:
        return set()
    if isinstance(value, bytes):
        return {value.hex()}
    if isinstance(value, date):
        return {value.isoformat(), value.strftime("%d-%m-%Y"), value.strftime("%d/%m/%Y")}
    text = str(value).strip()
    needles = {text}
    compact = text.replace(" ", "")
    needles.add(compact)
    if re.fullmatch(r"\d{4}[A-Z]{2}", compact):  # a postcode, with its space
        needles.add(f"{compact[:4]} {compact[4:]}")
    if re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{8,}", compact):  # an IBAN, in groups of four
        needles.add(" ".join(compact[i : i + 4] for i in range(0, len(compact), 4)))
    return {n for n in needles if 3 <= len(n) <= 200}


def _registry_values(var_dir: Path) -> dict[str, set[str]]:
    """``table.column`` -> every value the registry kept there, in the ways it can be written."""
    engine = create_engine(default_sqlite_url(var_dir))
    meta = MetaData()
    meta.reflect(engine)
    found: dict[str, set[str]] = {}
    wanted = {
        table: PERSONAL_COLUMNS.get(table, set()) | ADDRESS_COLUMNS.get(table, set())
        for table in PERSONAL_COLUMNS.keys() | ADDRESS_COLUMNS.keys()
    }
    try:
        with engine.connect() as conn:
            for table, columns in wanted.items():
                if table not in meta.tables:
                    continue
                model = meta.tables[table]
                for column in sorted(columns & set(model.c.keys())):
                    values: set[str] = set()
                    for (value,) in conn.execute(select(model.c[column])):
                        values |= _needles(value)
                    found[f"{table}.{column}"] = values
    finally:
        engine.dispose()
    return found


def _hits(line: str, needle: str) -> bool:
    # whole words only, so a first name such as "Ivo" is not found inside another word
    pattern = rf"(?<![A-Za-z0-9]){re.escape(needle)}(?![A-Za-z0-9])"
    flags = re.IGNORECASE if re.fullmatch(r"[A-Za-z]{2}\d+", needle) else 0
    return re.search(pattern, line, flags) is not None


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Service:
    with _service(tmp_path_factory.mktemp("log-privacy")) as svc:
        _scenario(svc)
    assert svc.proc.returncode is not None
    return svc


def test_the_scenario_was_logged(ran: Service) -> None:
    """The scan below looks at real log output: every request has its structured line, with the
    route template; uvicorn's own lines are there; its access log is not."""
    text = "\n".join(ran.lines())
    for route in (
        '"route":"/admin/holders"',
        '"route":"/holder/passes/{pass_number}/token"',
        '"route":"/admin/passes/{pass_number}/card.png"',
        '"route":"/merchant/redemptions"',
        '"method":"POST","route":"/admin/web/holders","status":200',
        '"route":"(unmatched)","status":404',
        '"route":"/admin/holders/{holder_id}","status":422',
        '"route":"/admin/web/passes/{pass_number}/card.png","status":422',
    ):
        assert route in text, route
    assert "uvicorn.error: Application startup complete." in text
    assert "uvicorn.error: Invalid HTTP request received." in text
    assert "uvicorn.access" not in text
    assert " HTTP/1.1" not in text  # uvicorn's access line: client - "GET /path HTTP/1.1" 200


def _scan(lines: list[str], values: dict[str, set[str]], own_ports: tuple[int, ...]) -> list[str]:
    """Every registry value, shape and client IP found in ``lines``."""
    hits: list[str] = []
    for number, line in enumerate(lines, 1):
        for column, needles in values.items():
            hits.extend(
                f"{column} {needle!r} on line {number}: {line}"
                for needle in needles
                if _hits(line, needle)
            )
        for shape, pattern in SHAPES.items():
            if pattern.search(line):
                hits.append(f"{shape} on line {number}: {line}")
        # the client's IP; the service's own addresses (the banner, the node) are configuration
        own = line
        for port in own_ports:
            own = own.replace(f"http://127.0.0.1:{port}", "")
        if "127.0.0.1" in own:
            hits.append(f"client IP on line {number}: {line}")
    return hits


def test_no_registry_value_in_any_log_line(ran: Service) -> None:
    values = _registry_values(ran.var_dir)
    assert len(values["registry_holder.last_name"]) >= 20  # the demo holders and ours
    assert HOLDER["last_name"] in values["registry_holder.last_name"]
    assert values["registry_merchant.iban"]
    assert values["registry_merchant.street"]
    assert values["registry_pass.pass_number"]
    values["scenario secrets"] = {s for s in ran.secrets if len(s) >= 6}
    assert len(values["scenario secrets"]) >= 6
    hits = _scan(ran.lines(), values, (ran.port, ran.anvil_port))
    assert hits == [], "\n".join(hits[:40])

    # the scan finds what was logged before: uvicorn's access line, a path in an error log
    number = next(v for v in values["registry_pass.pass_number"] if v.startswith("GR"))
    before = [
        f'INFO:     127.0.0.1:51234 - "GET /holder/passes/{number}/token?format=json HTTP/1.1" 200',
        f"WARNING api.problems: chain_error on /admin/passes/{number.lower()}/cards: x",
        f'INFO:     127.0.0.1:51234 - "GET /admin/web/holders?q={HOLDER["last_name"]} HTTP/1.1"',
    ]
    found = _scan(before, values, (ran.port, ran.anvil_port))
    for index in (1, 2, 3):
        assert any(f"on line {index}:" in hit for hit in found), index
    assert any("registry_holder.last_name" in hit for hit in found)
    assert any(hit.startswith("client IP") for hit in found)


# -- the holder search: by POST, so a name never goes in a URL ----------------------------------


@contextlib.contextmanager
def _staff_pages(runtime: Runtime, role: str) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False) as tc:
        page = tc.get("/admin/login?lang=en")
        match = CSRF.search(page.text)
        assert match is not None
        response = tc.post(
            "/admin/login",
            data={"username": role, "password": DEV_STAFF[role][1], "csrf": match.group(1)},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        yield tc


def _csrf(html: str) -> str:
    match = CSRF.search(html)
    assert match is not None
    return match.group(1)


def test_holder_search_posts_the_name(runtime: Runtime) -> None:
    record, person = runtime.store.registry.pass_holders()[3]
    name, number = person.last_name, record.pass_number
    with _staff_pages(runtime, "admin") as tc:
        form = tc.get("/admin/web/holders")
        assert form.status_code == 200
        assert '<form method="post" action="/admin/web/holders"' in form.text
        assert 'method="get"' not in form.text
        found = tc.post("/admin/web/holders", data={"csrf": _csrf(form.text), "q": name})
        assert found.status_code == 200
        assert f'id="pass-{number}"' in found.text
        assert f'value="{name}"' in found.text  # the search stays in the field
        assert str(found.url).endswith("/admin/web/holders")  # no query string
        # the name is in no link or form of the page
        assert f"q={name}" not in found.text
        assert 'name="q" value="' not in found.text.replace(
            f'id="holder-q" name="q" value="{name}"', ""
        )

        # a name in the query string finds nothing: the page never searches names by GET
        by_get = tc.get("/admin/web/holders", params={"q": name})
        assert by_get.status_code == 200
        assert 'id="no-holders"' in by_get.text
        assert f'id="pass-{number}"' not in by_get.text
        # a pass number does (the link back after a pass action)
        by_number = tc.get("/admin/web/holders", params={"q": number.lower()})
        assert f'id="pass-{number}"' in by_number.text

        # after an action the page goes back to the pass by its number, never by the name
        csrf = _csrf(found.text)
        for action in ("block", "unblock"):
            done = tc.post(
                f"/admin/web/passes/{number}/{action}",
                data={"csrf": csrf, "q": name},
                follow_redirects=False,
            )
            assert done.status_code == 303, done.text
            location = done.headers["location"]
            assert name not in location
            assert f"q={number}" in location
        assert str(runtime.store.registry.pass_by_number(number).status) == "active"


def test_holder_search_needs_the_csrf_token_and_the_admin_scope(runtime: Runtime) -> None:
    record, person = runtime.store.registry.pass_holders()[4]
    name, number = person.last_name, record.pass_number
    with _staff_pages(runtime, "admin") as tc:
        refused = tc.post("/admin/web/holders", data={"q": name})
        assert refused.status_code == 403
        assert 'id="problem"' in refused.text
        assert number not in refused.text
        forged = tc.post("/admin/web/holders", data={"q": name, "csrf": "x" * 48})
        assert forged.status_code == 403
    with _staff_pages(runtime, "issuer") as tc:
        form = tc.get("/admin/web/issuance")
        denied = tc.post("/admin/web/holders", data={"csrf": _csrf(form.text), "q": name})
        assert denied.status_code == 403
        assert number not in denied.text
    with TestClient(create_app(runtime.settings, runtime)) as anonymous:
        away = anonymous.post("/admin/web/holders", data={"q": name}, follow_redirects=False)
        assert away.status_code == 303
        assert away.headers["location"] == "/admin/login"
