"""Small-cell suppression: primary, complementary, and no suppressed figure can be computed back."""

from __future__ import annotations

from ledger.reports.suppression import Equation, determined, suppress


def _column(cells: dict[str, int]) -> list[Equation[str]]:
    return [Equation((*tuple((k, 1) for k in cells), ("total", -1)))]


def test_one_small_cell_alone_could_be_computed_back_from_the_total() -> None:
    # the back-computation case: only C is hidden, the total is published, so C = total - A - B
    eq = _column({"A": 120, "B": 80, "C": 7})
    assert determined(eq, {"C"}) == {"C"}
    assert determined(eq, {"C", "B"}) == set()


def test_complementary_suppression_hides_the_next_smallest_cell() -> None:
    values = {"A": 120, "B": 80, "C": 7, "total": 207}
    holders = {"A": 40, "B": 25, "C": 3, "total": 68}
    result = suppress(
        values=values, holders=holders, equations=_column(values), pinned=["total"], k=10
    )
    assert result.reasons == {"C": "primary", "B": "complementary"}
    assert determined(_column(values), result.reasons) == set()
    assert not result.exposed


def test_nothing_small_nothing_suppressed() -> None:
    values = {"A": 1, "B": 2, "total": 3}
    result = suppress(values=values, holders={"A": 10, "B": 11}, equations=_column(values), k=10)
    assert result.reasons == {}


def test_zero_holders_is_not_suppressed() -> None:
    values = {"A": 0, "B": 50, "total": 50}
    result = suppress(values=values, holders={"A": 0, "B": 30}, equations=_column(values), k=10)
    assert result.reasons == {}


def test_two_dimensional_table_no_cell_recoverable() -> None:
    # rows r1..r3 x columns c1..c2, with row totals and column totals (all published)
    rows, cols = ["r1", "r2", "r3"], ["c1", "c2"]
    values = {
        (r, c): v
        for (r, c), v in zip(
            [(r, c) for r in rows for c in cols], [50, 40, 3, 60, 70, 80], strict=True
        )
    }
    holders = {key: (2 if v < 10 else 30) for key, v in values.items()}
    equations = []
    for r in rows:
        values[(r, "*")] = sum(values[(r, c)] for c in cols)
        equations.append(Equation((*tuple(((r, c), 1) for c in cols), ((r, "*"), -1))))
    for c in cols:
        values[("*", c)] = sum(values[(r, c)] for r in rows)
        equations.append(Equation((*tuple(((r, c), 1) for r in rows), (("*", c), -1))))
    pinned = [("*", c) for c in cols]
    result = suppress(values=values, holders=holders, equations=equations, pinned=pinned, k=10)
    assert result.reasons[("r2", "c1")] == "primary"
    assert len(result.reasons) >= 3  # the row and the column each need a second hidden figure
    primary = {k for k, why in result.reasons.items() if why == "primary"}
    assert not determined(equations, result.reasons) & primary
    assert not set(pinned) & set(result.reasons)


def test_linked_metrics_are_protected_too() -> None:
    # remaining = issued - redeemed: hiding only "redeemed" would leave it computable
    values = {"issued": 100, "redeemed": 4, "remaining": 96}
    eq = [Equation((("remaining", 1), ("issued", -1), ("redeemed", 1)))]
    result = suppress(
        values=values,
        holders={"issued": 30, "redeemed": 2, "remaining": 30},
        equations=eq,
        k=10,
    )
    assert "redeemed" in result.reasons
    assert len(result.reasons) == 2
    assert determined(eq, result.reasons) == set()
