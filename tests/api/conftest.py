"""Fixtures for the API tests: a real runtime (embedded anvil in a tmp dir, SQLite); no mocks."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():
    # starlette 1.x prefers httpx2 for its TestClient; httpx works and is what we install
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api.main import create_app
from api.runtime import Runtime
from api.settings import Settings
from wallet import Domain, PassToken, encode_token_uri, sign_pass_token

PROJECT_ROOT = Path(__file__).resolve().parents[2]

ADMIN = {"Authorization": "Bearer development-only-admin-token"}
HOLDER = {"Authorization": "Bearer development-only-holder-token"}


def merchant(merchant_id: int, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer development-only-merchant-{merchant_id}-token"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def dev_settings(var_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "development",
        "var_dir": var_dir,
        "build_dir": PROJECT_ROOT / "var" / "build",
        "anvil_port": 0,
        "receipt_timeout_s": 20.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def signed_uri(
    runtime: Runtime,
    pass_id: bytes,
    *,
    expiry: int | None = None,
    domain: Domain | None = None,
    key: bytes | None = None,
) -> str:
    token = PassToken(
        pass_id=pass_id, serial=0, expiry=expiry if expiry is not None else int(time.time()) + 60
    )
    signed = sign_pass_token(
        token, domain=domain or runtime.domain, private_key=key or runtime.keys.pass_signer.key
    )
    return encode_token_uri(signed)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STADJERSPAS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime.start(dev_settings(tmp_path_factory.mktemp("var")))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="session")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), raise_server_exceptions=False) as tc:
        yield tc
