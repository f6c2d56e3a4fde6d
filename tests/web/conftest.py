"""The real app for the browser tests: its own embedded runtime (anvil in a tmp dir, SQLite,
demo data) served by uvicorn in a thread on 127.0.0.1 (a secure context, as the camera needs).
One per test module."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.main import create_app
from api.runtime import Runtime
from api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    settings = Settings(
        env="development",
        var_dir=tmp_path_factory.mktemp("web-var"),
        build_dir=ROOT / "var" / "build",
        anvil_port=0,
        receipt_timeout_s=20.0,
    )
    with Runtime.start(settings) as rt:
        yield rt


@pytest.fixture(scope="module")
def base_url(runtime: Runtime) -> Iterator[str]:
    """The real app on a free port of 127.0.0.1 (base URL without trailing slash)."""
    uvicorn = pytest.importorskip("uvicorn")
    config = uvicorn.Config(
        create_app(runtime.settings, runtime),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="web-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
