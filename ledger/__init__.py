"""Stadjerspas Ledger: chain client, compiler driver, local node, relayer and indexer.

`ledger` never imports `api` (see docs/architecture.md); its configuration is plain typed objects.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
