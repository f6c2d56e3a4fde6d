"""Brownie fixtures: every test runs in isolation (brownie reverts the chain after each)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def isolation(fn_isolation: Any) -> None:
    pass
