"""HTTP middleware: security headers, CORS, request size and rate limits, access logs."""

from __future__ import annotations

from fastapi import FastAPI

from api.settings import Settings

__all__ = ["install_middleware"]


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Install the service's middleware (being built)."""
    del app, settings
