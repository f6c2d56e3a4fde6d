"""The interactive API docs page (``/docs``), served entirely by the service itself.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN (jsDelivr) and start
them with an inline script, so a compromised or unreachable CDN would run code on a page that
staff open with their bearer tokens. Here instead (issue 10, section 4):

- ``/docs`` is a static page whose script and style come from this origin: Swagger UI from the
  npm package ``swagger-ui-dist`` (pinned in ``package.json``), copied to
  ``api/static/build/docs/`` by ``npm run build:web`` (``make setup``), and its start script
  ``api/static/js/docs.js``; no inline script, so the page's Content-Security-Policy
  (:data:`api.middleware.DOCS_CSP`) allows scripts and styles from ``'self'`` only. Swagger UI's
  validator badge (which calls validator.swagger.io) is switched off.
- ``/redoc`` is off (there is one docs page; ReDoc's standalone bundle would need its own
  toolchain).
- The page is the same in every environment; ``/openapi.json`` stays where it was.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

__all__ = ["ASSETS", "DOCS_PATH", "router"]

DOCS_PATH = "/docs"
#: The page's assets, all under ``/static/`` (``api/static/``) of this service.
ASSETS = {
    "script": "/static/build/docs/swagger-ui-bundle.js",
    "style": "/static/build/docs/swagger-ui.css",
    "icon": "/static/build/docs/favicon-32x32.png",
    "start": "/static/js/docs.js",
}

router = APIRouter(include_in_schema=False)


def docs_html(title: str, openapi_url: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{escape(title)} - docs</title>
  <link rel="stylesheet" href="{ASSETS["style"]}">
  <link rel="icon" type="image/png" href="{ASSETS["icon"]}">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{escape(openapi_url)}"></div>
  <script src="{ASSETS["script"]}"></script>
  <script src="{ASSETS["start"]}"></script>
</body>
</html>
"""


@router.get(DOCS_PATH)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI for ``/openapi.json``, every file from this service."""
    app = request.app
    return HTMLResponse(docs_html(str(app.title), str(app.openapi_url or "/openapi.json")))
