"""The FastAPI application factory.

``create_app(settings, runtime)`` wires routes, dependencies and problem handlers around a
runtime that the caller started (and will close): the app does not own the chain, so tests and
the CLI decide its lifetime.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from api import __version__, docs
from api import imports as import_services
from api.auth import Auth
from api.middleware import UNLIMITED_PATHS, install_middleware
from api.problems import document_problems, install_problem_handlers
from api.routes import (
    admin,
    admin_letters,
    admin_pages,
    admin_registry,
    auth,
    health,
    holder,
    import_pages,
    imports,
    merchant,
    pages,
    partner_pages,
    partners,
    reports,
)
from api.runtime import Runtime
from api.schemas import TokenIn
from api.settings import DEV_MERCHANT_COUNT, Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
Stadjerspas Ledger: entitlements and redemptions of the city pass on a permissioned Ethereum
chain; personal data stays in the municipality's own database.

Log in at `POST /auth/token` (staff: username and password; merchant terminals: terminal id and
secret; holders: pass number and activation code or PIN) for a short-lived bearer token with
scopes; every route checks its scopes and whose objects it touches. Amounts are integers: euro
cents or a number of uses. Errors are RFC 9457 problem details with a stable `code`.

Development only: staff `admin`/`issuer`/`finance`/`auditor` with password
`development-only-<role>-password`, terminals `dev-terminal-<merchant id>` with secret
`development-only-terminal-<merchant id>-secret`, demo passes with PIN `development-only-pin`,
and the static tokens `development-only-admin-token`, `development-only-holder-token`,
`development-only-merchant-<id>-token`.
"""

TAGS = [
    {"name": "auth", "description": "Log in; staff users and merchant terminals (admins)."},
    {"name": "health", "description": "Liveness and which chain and contract are in use."},
    {"name": "admin", "description": "The municipality: issue entitlements."},
    {"name": "holder", "description": "Pass holders: QR token and balances."},
    {"name": "merchant", "description": "Partners: redeem against a scanned pass token."},
]


#: Pages that share a path with an API operation: documented, so that the path's methods (and
#: the ``Allow`` header of a 405) agree with the document.
_SHARED_PATH_PAGES: dict[str, dict[str, Any]] = {
    "/merchant/scan": {
        "get": {
            "tags": ["merchant"],
            "summary": "The scanner page for a terminal's browser (HTML)",
            "description": "Without a terminal session cookie it redirects to `/merchant/login`.",
            "operationId": "merchant_scan_page",
            "responses": {
                "200": {"description": "The page", "content": {"text/html": {}}},
                "303": {
                    "description": "Not logged in: to the login page",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                },
            },
        }
    }
}


def _finish_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """What FastAPI cannot derive: the login body's model (``/auth/token`` reads JSON or form
    data itself), pages on API paths, and the problem responses of every operation."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "TokenIn", TokenIn.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for path, operations in _SHARED_PATH_PAGES.items():
        for method, operation in operations.items():
            document["paths"].setdefault(path, {}).setdefault(method, operation)
    return document_problems(document, unlimited_paths=UNLIMITED_PATHS)


async def _page_halt(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, admin_pages.PageHalt)
    return exc.response


def create_app(settings: Settings, runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Sync routes run in anyio's thread pool (40 threads by default); a redemption holds its
        # thread while its batch is mined, so concurrent terminals need more of them.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        try:  # an import interrupted by a restart: finish its chain part (api.imports)
            await anyio.to_thread.run_sync(import_services.resume_unfinished, runtime)
        except Exception:
            log.exception("could not resume an interrupted import; run its file again")
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="Stadjerspas Ledger API",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        license_info={"name": "EUPL-1.2", "identifier": "EUPL-1.2"},
        # /docs is api.docs (Swagger UI served by this service, never a CDN); no ReDoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.auth = Auth(settings, runtime.store)
    # development terminals for the demo partners (merchant ids 1..3)
    app.state.auth.bootstrap(i for i in runtime.keys.merchant_ids() if i <= DEV_MERCHANT_COUNT)
    install_problem_handlers(app)
    app.add_exception_handler(admin_pages.PageHalt, _page_halt)
    install_middleware(app, settings)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(admin.router)
    app.include_router(holder.router)
    app.include_router(merchant.router)
    app.include_router(reports.router)
    app.include_router(admin_registry.router)
    app.include_router(partners.router)
    app.include_router(imports.router)
    app.include_router(import_pages.router)
    app.include_router(admin_pages.router)
    app.include_router(partner_pages.router)
    app.include_router(admin_letters.router)
    app.include_router(pages.router)
    app.include_router(docs.router)

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish_openapi(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app
