"""Small-cell suppression with complementary suppression, checked by linear algebra.

A published table is a set of *figures* (one number each) and the linear *equations* that tie
them (a column of districts adds up to the scheme's total; ``remaining = issued - redeemed +
reversed - expired``). Some figures are *pinned*: published unsuppressed elsewhere (the scheme
report's totals), so they are always known to a reader.

1. Primary suppression: a figure based on ``0 < holders < k`` distinct holders is suppressed.
2. Complementary suppression: a reader knows every unsuppressed figure, so each equation gives a
   linear equation over the suppressed ones. A suppressed figure can be computed back exactly when
   its unit vector lies in the row space of those equations (restricted to the suppressed
   figures). While any primary figure is so determined, one more figure of an equation that
   contains it is suppressed (the smallest non-zero value first), and the check runs again.

The row space is computed by Gaussian elimination modulo the Mersenne prime 2**61 - 1; the
coefficients are small integers, so the rank equals the rank over the rationals (an unlucky prime
could only make the check stricter, never let a determined figure through unnoticed for these
0/+-1 systems of this size).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "DEFAULT_K",
    "Equation",
    "SuppressionResult",
    "determined",
    "suppress",
]

K = TypeVar("K", bound=Hashable)

DEFAULT_K = 10
_P = (1 << 61) - 1

PRIMARY = "primary"
COMPLEMENTARY = "complementary"


@dataclass(frozen=True, slots=True)
class Equation(Generic[K]):
    """``sum(coefficient * figure) == 0`` over the figures named by ``terms``."""

    terms: tuple[tuple[K, int], ...]


@dataclass(slots=True)
class SuppressionResult(Generic[K]):
    #: suppressed figure -> "primary" or "complementary"
    reasons: dict[K, str] = field(default_factory=dict)
    #: primary figures a reader can still compute back (only when nothing else could be
    #: suppressed to protect them, e.g. every other figure of their equations is pinned)
    exposed: set[K] = field(default_factory=set)


def determined(equations: Sequence[Equation[K]], unknown: Iterable[K]) -> set[K]:
    """The figures of ``unknown`` that the equations fix, given every other figure."""
    unknowns = list(dict.fromkeys(unknown))
    column = {key: i for i, key in enumerate(unknowns)}
    rows: list[dict[int, int]] = []
    for equation in equations:
        row: dict[int, int] = {}
        for key, coefficient in equation.terms:
            if key in column and coefficient:
                col = column[key]
                row[col] = (row.get(col, 0) + coefficient) % _P
        row = {c: v for c, v in row.items() if v}
        if row:
            rows.append(row)
    # Reduced row echelon form over GF(p), sparse rows.
    pivots: dict[int, dict[int, int]] = {}  # pivot column -> row with 1 at the pivot
    for row in rows:
        for col, prow in pivots.items():
            factor = row.get(col)
            if factor:
                for c, v in prow.items():
                    row[c] = (row.get(c, 0) - factor * v) % _P
                row = {c: v for c, v in row.items() if v}
        if not row:
            continue
        pivot = min(row)
        inverse = pow(row[pivot], _P - 2, _P)
        row = {c: (v * inverse) % _P for c, v in row.items()}
        for col, prow in list(pivots.items()):
            factor = prow.get(pivot)
            if factor:
                for c, v in row.items():
                    prow[c] = (prow.get(c, 0) - factor * v) % _P
                pivots[col] = {c: v for c, v in prow.items() if v}
        pivots[pivot] = row
    return {unknowns[col] for col, row in pivots.items() if len(row) == 1}


def suppress(
    *,
    values: Mapping[K, int],
    holders: Mapping[K, int],
    equations: Sequence[Equation[K]],
    pinned: Iterable[K] = (),
    k: int = DEFAULT_K,
) -> SuppressionResult[K]:
    """Which figures to suppress: primary (``0 < holders < k``) and complementary ones."""
    if k < 1:
        raise ValueError("k must be at least 1")
    fixed = set(pinned)
    result: SuppressionResult[K] = SuppressionResult()
    for key, count in holders.items():
        if 0 < count < k and key not in fixed:
            result.reasons[key] = PRIMARY
    if not result.reasons:
        return result
    involving: dict[K, list[Equation[K]]] = {}
    for equation in equations:
        for key, coefficient in equation.terms:
            if coefficient:
                involving.setdefault(key, []).append(equation)

    def preference(c: K) -> tuple[bool, int, int, str]:
        value = values.get(c, 0)
        return (value == 0, abs(value), holders.get(c, 0), repr(c))

    # Phase 1 (cheap, the usual case): no equation may have exactly one hidden figure.
    changed = True
    while changed:
        changed = False
        for equation in equations:
            hidden = [key for key, c in equation.terms if c and key in result.reasons]
            if len(hidden) != 1:
                continue
            candidates = [
                key
                for key, c in equation.terms
                if c and key not in result.reasons and key not in fixed
            ]
            if candidates:
                result.reasons[min(candidates, key=preference)] = COMPLEMENTARY
                changed = True
    # Phase 2 (exact): combinations of equations, checked by linear algebra.
    while True:
        # only the primary figures need protecting: a complementary figure a reader can compute
        # is merely a pointless suppression (it is known anyway), not a disclosure
        primary = {key for key, why in result.reasons.items() if why == PRIMARY}
        open_ = (determined(equations, result.reasons) & primary) - result.exposed
        if not open_:
            return result
        key = min(open_, key=repr)  # deterministic order
        suppressed = set(result.reasons)
        near = {
            other
            for equation in involving.get(key, [])
            for other, coefficient in equation.terms
            if coefficient and other not in suppressed and other not in fixed
        }
        # figures in any equation that touches a suppressed one: hiding one of these can break
        # the chain of equations a reader would use
        wider = {
            other
            for hidden in suppressed
            for equation in involving.get(hidden, [])
            for other, coefficient in equation.terms
            if coefficient and other not in suppressed and other not in fixed
        }
        if not wider:
            result.exposed.add(key)
            continue
        choice = None
        for candidate in sorted(wider, key=preference):
            if key not in determined(equations, suppressed | {candidate}):
                choice = candidate
                break
        if choice is None:  # no single figure suffices: hide a neighbour and look again
            choice = min(near or wider, key=preference)
        result.reasons[choice] = COMPLEMENTARY
