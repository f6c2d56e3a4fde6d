"""Stadjerspas HTTP API: FastAPI app, service runtime (chain, relayers, store) and the CLI.

`api` may import `ledger` and `wallet`; they never import `api` (docs/architecture.md).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
