"""The import direction of docs/architecture.md, checked on the source with `ast`.

- `ledger` and `wallet` never import `api`;
- `wallet` never imports `ledger`;
- `wallet` needs no node and no database: no web3, SQLAlchemy/SQLModel, database drivers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN: dict[str, set[str]] = {
    "ledger": {"api"},
    "wallet": {
        "api",
        "ledger",
        "web3",
        "sqlalchemy",
        "sqlmodel",
        "alembic",
        "psycopg",
        "psycopg2",
        "asyncpg",
        "sqlite3",
        "solcx",
        "fastapi",
        "requests",
        "httpx",
    },
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_roots(path: Path, package: str) -> set[tuple[str, int]]:
    """Top-level names of everything `path` imports (relative imports resolved to `package`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the package (ast cannot leave it)
                found.add((package, node.lineno))
            elif node.module:
                found.add((node.module.split(".")[0], node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add((node.args[0].value.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    modules = _modules(package)
    if not modules:
        pytest.skip(f"{package}/ has no modules yet")
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules
        for name, line in sorted(_imported_roots(path, package))
        if name in FORBIDDEN[package]
    ]
    assert not violations, "forbidden imports:\n" + "\n".join(violations)


def test_checker_sees_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import web3.eth\nfrom api.routes import x\nimport importlib\n"
        "importlib.import_module('sqlalchemy.orm')\nfrom . import sibling\n"
    )
    names = {name for name, _ in _imported_roots(bad, "wallet")}
    assert names >= {"web3", "api", "sqlalchemy", "importlib", "wallet"}
