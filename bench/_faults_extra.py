"""Scenarios of :mod:`bench.faults` that put a proxy, PostgreSQL or a separate indexer beside
the service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.faults import Setup

SETUPS: dict[str, Callable[[str, Path], Setup]] = {}
