"""Routes under construction (see the module's owner); registered in api/main.py."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
