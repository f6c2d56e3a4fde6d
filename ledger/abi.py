"""Small helpers over contract ABIs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["abi_type"]


def abi_type(param: Mapping[str, Any]) -> str:
    """The canonical type of an ABI parameter, tuples spelled out: ``(uint256,bytes32)[]``."""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(abi_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind
