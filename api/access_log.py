"""Structured JSON access logs without personal data.

One line per HTTP request on logger ``api.access`` (written by :mod:`api.middleware`)::

    {"event":"http_request","method":"GET","route":"/holder/passes/{pass_number}/token",
     "status":200,"duration_ms":3.1,"principal":"holder","request_id":"9f0c..."}

``route`` is the matched route's *template*, never the raw path (which can hold a pass
number); unmatched paths log ``(unmatched)``. Query strings, tokens, names, pass numbers and
client IPs are never logged. ``principal`` is only the kind (staff, terminal, holder or
anonymous), not who. Error logs name the request by :func:`route_template` too.

This is the service's only access log: ``stadjerspas up`` turns uvicorn's off (it writes the
client IP, the full path and the query string) and sends every logger through
:class:`api.log_privacy.PrivacyFilter` to stderr.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["UNMATCHED", "access_log", "access_record", "log_request", "route_template"]

access_log = logging.getLogger("api.access")
UNMATCHED = "(unmatched)"


def route_template(scope: Mapping[str, Any]) -> str:
    """The matched route's template (``/holder/passes/{pass_number}/token``), with the root
    path, or :data:`UNMATCHED`: what every log line names instead of the request's path."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    root = scope.get("root_path", "")
    return (root if isinstance(root, str) else "") + template


def access_record(
    scope: Mapping[str, Any], status: int, principal: str, request_id: str, started: float
) -> dict[str, Any]:
    """The fields of one access-log line (``started`` from :func:`time.perf_counter`)."""
    return {
        "event": "http_request",
        "method": scope.get("method", ""),
        "route": route_template(scope),
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "principal": principal,
        "request_id": request_id,
    }


def log_request(
    scope: Mapping[str, Any], status: int, principal: str, request_id: str, started: float
) -> None:
    if access_log.isEnabledFor(logging.INFO):
        record = access_record(scope, status, principal, request_id, started)
        access_log.info(json.dumps(record, separators=(",", ":")))
