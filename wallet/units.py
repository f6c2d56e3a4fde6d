"""Small value types shared by the wallet (and re-used by ``ledger`` and ``api``).

All amounts are integers, never floats: euro cents or a number of uses, depending on the scheme.
"""

from __future__ import annotations

from typing import NewType

__all__ = ["UINT64_MAX", "Amount", "Cents", "Uses"]

#: An amount in the unit of its scheme: euro cents or a number of uses.
Amount = NewType("Amount", int)
#: Euro cents (a kind of :data:`Amount`).
Cents = NewType("Cents", Amount)
#: A number of uses (a kind of :data:`Amount`).
Uses = NewType("Uses", Amount)

UINT64_MAX = 2**64 - 1
