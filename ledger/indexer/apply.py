"""Apply: decoded rows, block rows and the checkpoint in ONE database transaction per chunk.

- Event rows are inserted in bulk (SQLAlchemy Core ``insert()`` with executemany) and ignore
  rows that already exist (PostgreSQL ``ON CONFLICT DO NOTHING``, SQLite ``INSERT OR IGNORE``);
  the natural keys of :mod:`ledger.store.index` are ``(chain_id, block_hash, log_index)`` (plus
  ``position`` for entitlements), so applying the same chunk twice changes nothing.
- Block rows (``index_block``) are upserted by ``(chain_id, number)``. The index keeps the blocks
  that have events, and every block of the last ``max_reorg_depth`` below the checkpoint (so a
  reorganisation can be walked back block by block); older blocks without events are pruned in
  the same transaction, so the rows left depend only on the chain and the final checkpoint, not on
  how the work was split into chunks or interrupted.
- The checkpoint is compare-and-set: the transaction only commits if the stored checkpoint is
  still the one the chunk was fetched after (:class:`CheckpointMoved` otherwise).
- :meth:`IndexWriter.rewind` deletes every row above a common ancestor and moves the checkpoint
  back, in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, Table, and_, delete, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Insert
from sqlmodel import SQLModel

from ledger.indexer.checkpoint import Checkpoint, load_checkpoint
from ledger.indexer.decode import DecodedChunk
from ledger.indexer.errors import CheckpointMoved
from ledger.indexer.fetch import Header
from ledger.store.index import (
    EVENT_TABLES,
    IndexBlock,
    IndexCheckpoint,
    IndexedCohort,
    IndexedEntitlement,
)

__all__ = ["IndexWriter", "table_of"]


def table_of(model: type[SQLModel]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


_BLOCK = table_of(IndexBlock)
_CHECKPOINT = table_of(IndexCheckpoint)
_COHORT = table_of(IndexedCohort)
_EVENT_TABLES = [table_of(model) for model in EVENT_TABLES]


def _now() -> datetime:
    return datetime.now(UTC)


class IndexWriter:
    """Writes one chain's index through ``engine``."""

    def __init__(self, engine: Engine, *, chain_id: int, contract: str, keep_blocks: int) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.contract = contract.lower()
        self.keep_blocks = keep_blocks
        self.dialect = engine.dialect.name
        self._inserts: dict[Table, Insert] = {}

    # ------------------------------------------------------------------ statements

    def _insert_ignore(self, table: Table) -> Insert:
        stmt = self._inserts.get(table)
        if stmt is None:
            if self.dialect == "postgresql":
                stmt = postgresql.insert(table).on_conflict_do_nothing()
            elif self.dialect == "sqlite":
                stmt = sqlite.insert(table).on_conflict_do_nothing()
            else:  # pragma: no cover - other databases are not supported by the store
                stmt = insert(table)
            self._inserts[table] = stmt
        return stmt

    def _upsert_blocks(self, conn: Connection, headers: Iterable[Header]) -> None:
        rows = [
            {
                "chain_id": self.chain_id,
                "number": h.number,
                "hash": h.hash,
                "parent_hash": h.parent_hash,
                "timestamp": h.timestamp,
            }
            for h in headers
        ]
        if not rows:
            return
        changed = ("hash", "parent_hash", "timestamp")
        if self.dialect == "postgresql":
            pg = postgresql.insert(_BLOCK)
            conn.execute(
                pg.on_conflict_do_update(
                    index_elements=["chain_id", "number"], set_={c: pg.excluded[c] for c in changed}
                ),
                rows,
            )
        else:
            lite = sqlite.insert(_BLOCK)
            conn.execute(
                lite.on_conflict_do_update(
                    index_elements=["chain_id", "number"],
                    set_={c: lite.excluded[c] for c in changed},
                ),
                rows,
            )

    # ------------------------------------------------------------------ reads

    def checkpoint(self) -> Checkpoint | None:
        with self.engine.connect() as conn:
            return load_checkpoint(conn, chain_id=self.chain_id, contract=self.contract)

    def stored_blocks(self, lowest: int) -> list[tuple[int, str]]:
        """``(number, hash)`` of stored blocks from ``lowest`` up, highest first."""
        query = (
            select(_BLOCK.c.number, _BLOCK.c.hash)
            .where(_BLOCK.c.chain_id == self.chain_id, _BLOCK.c.number >= lowest)
            .order_by(_BLOCK.c.number.desc())
        )
        with self.engine.connect() as conn:
            return [(int(n), str(h)) for n, h in conn.execute(query)]

    # ------------------------------------------------------------------ writes

    def _move_checkpoint(
        self, conn: Connection, expected: Checkpoint | None, new: Checkpoint | None
    ) -> None:
        key = and_(_CHECKPOINT.c.chain_id == self.chain_id, _CHECKPOINT.c.contract == self.contract)
        if expected is None:
            if new is None:
                return
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(_CHECKPOINT).values(
                            chain_id=self.chain_id,
                            contract=self.contract,
                            block_number=new.number,
                            block_hash=new.hash,
                            updated_at=_now(),
                        )
                    )
            except IntegrityError as exc:
                raise CheckpointMoved(
                    "another indexer created the checkpoint of this chain and contract"
                ) from exc
            return
        match = and_(
            key,
            _CHECKPOINT.c.block_number == expected.number,
            _CHECKPOINT.c.block_hash == expected.hash,
        )
        if new is None:
            result = conn.execute(delete(_CHECKPOINT).where(match))
        else:
            result = conn.execute(
                update(_CHECKPOINT)
                .where(match)
                .values(block_number=new.number, block_hash=new.hash, updated_at=_now())
            )
        if result.rowcount != 1:
            raise CheckpointMoved(
                f"the checkpoint is no longer block {expected.number} ({expected.hash}); "
                "another indexer wrote this chain's index"
            )

    def _resolve_claims(self, conn: Connection, decoded: DecodedChunk) -> None:
        if not decoded.unresolved_roots:
            return
        found: dict[str, int] = {
            str(root): int(scheme)
            for root, scheme in conn.execute(
                select(_COHORT.c.root, _COHORT.c.scheme_id).where(
                    _COHORT.c.chain_id == self.chain_id,
                    _COHORT.c.root.in_(sorted(decoded.unresolved_roots)),
                )
            )
        }
        for row in decoded.rows.get(IndexedEntitlement, []):
            if row["scheme_id"] is None:
                # a cohort issued before the indexer's start block: scheme 0 marks "unknown"
                row["scheme_id"] = found.get(row["cohort_root"], 0)

    def _prune(self, conn: Connection, low: int, high: int) -> None:
        """Delete block rows in ``[low, high)`` that have no events."""
        if high <= low:
            return
        conditions = [
            _BLOCK.c.chain_id == self.chain_id,
            _BLOCK.c.number >= low,
            _BLOCK.c.number < high,
        ]
        conditions.extend(
            ~exists().where(
                table.c.chain_id == _BLOCK.c.chain_id,
                table.c.block_number == _BLOCK.c.number,
            )
            for table in _EVENT_TABLES
        )
        conn.execute(delete(_BLOCK).where(*conditions))

    def apply(
        self,
        decoded: DecodedChunk,
        headers: Mapping[int, Header],
        *,
        from_block: int,
        new: Header,
        expected: Checkpoint | None,
    ) -> None:
        """Rows, blocks and the checkpoint (``new``) of one chunk, in one transaction."""
        with self.engine.begin() as conn:
            self._move_checkpoint(conn, expected, Checkpoint(new.number, new.hash))
            self._resolve_claims(conn, decoded)
            for model, rows in decoded.rows.items():
                if rows:
                    conn.execute(self._insert_ignore(table_of(model)), rows)
            self._upsert_blocks(conn, headers.values())
            low = (expected.number if expected is not None else from_block) - self.keep_blocks
            self._prune(conn, min(low, from_block), new.number - self.keep_blocks)

    def rewind(self, ancestor: Checkpoint | None, *, expected: Checkpoint, floor: int) -> None:
        """Delete rows above ``ancestor`` (from ``floor`` if ``None``); move the checkpoint."""
        above = ancestor.number if ancestor is not None else floor - 1
        with self.engine.begin() as conn:
            self._move_checkpoint(conn, expected, ancestor)
            for table in _EVENT_TABLES:
                conn.execute(
                    delete(table).where(
                        table.c.chain_id == self.chain_id, table.c.block_number > above
                    )
                )
            conn.execute(
                delete(_BLOCK).where(_BLOCK.c.chain_id == self.chain_id, _BLOCK.c.number > above)
            )
