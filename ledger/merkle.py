"""Merkle trees the contract checks with OpenZeppelin's ``MerkleProof`` (commutative pairs).

Two kinds of tree share one shape (``contracts/libraries/ReceiptTree.sol``): level by level, node
``2i`` is hashed with node ``2i + 1`` and an odd last node moves up unchanged.

- Receipt trees: one per ``redeem``/``redeemBatch`` call, over the receipts it accepted, in
  log order.
  A reversal presents a receipt with its proof.
- Cohort trees: one per cohort issued by root; leaf ``i`` is
  ``keccak256(keccak256(abi.encode(i, passId, amount)))`` as in OpenZeppelin's StandardMerkleTree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi import encode
from eth_utils import keccak

from ledger.errors import LedgerError

__all__ = [
    "RECEIPT_SLOTS",
    "CohortLeaf",
    "MerkleError",
    "MerkleTree",
    "ReceiptLeaf",
    "cohort_leaf_hash",
    "hash_pair",
    "receipt_leaf_hash",
    "verify_proof",
]


class MerkleError(LedgerError):
    """A tree was asked for something it cannot give (no leaves, an index out of range)."""


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin ``Hashes.commutativeKeccak256``: the smaller word first."""
    return keccak(a + b) if a < b else keccak(b + a)


@dataclass(frozen=True, slots=True)
class ReceiptLeaf:
    """The ``Receipt`` struct of a redemption, as the contract commits to it."""

    redemption_id: int
    pass_id: bytes
    scheme_id: int
    merchant: str
    debited: int
    credited: int

    def as_tuple(self) -> tuple[int, bytes, int, str, int, int]:
        return (
            self.redemption_id,
            self.pass_id,
            self.scheme_id,
            self.merchant,
            self.debited,
            self.credited,
        )


#: Slots of the contract's receipt log (``ReceiptLog.SLOTS``): a root is kept in slot
#: ``root mod RECEIPT_SLOTS``, reused once the reversal window of the root it held has passed.
RECEIPT_SLOTS = 1 << 16


def receipt_leaf_hash(receipt: ReceiptLeaf) -> bytes:
    """``LedgerHashes.receiptLeaf``: keccak of the ABI-encoded receipt."""
    return keccak(
        encode(
            ["uint256", "bytes32", "uint256", "address", "uint64", "uint64"],
            list(receipt.as_tuple()),
        )
    )


@dataclass(frozen=True, slots=True)
class CohortLeaf:
    """One holder's share in a cohort: leaf ``index`` credits ``amount`` to ``pass_id``."""

    index: int
    pass_id: bytes
    amount: int


def cohort_leaf_hash(leaf: CohortLeaf) -> bytes:
    """``LedgerHashes.cohortLeaf``: the StandardMerkleTree double hash."""
    return keccak(
        keccak(encode(["uint256", "bytes32", "uint64"], [leaf.index, leaf.pass_id, leaf.amount]))
    )


class MerkleTree:
    """All levels of a tree over leaf hashes, for the root and for proofs."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        if not leaf_hashes:
            raise MerkleError("a Merkle tree needs at least one leaf, got none")
        for position, leaf in enumerate(leaf_hashes):
            if len(leaf) != 32:
                raise MerkleError(
                    f"leaf {position} is {len(leaf)} bytes; leaves are 32-byte hashes"
                )
        levels: list[list[bytes]] = [list(leaf_hashes)]
        while len(levels[-1]) > 1:
            nodes = levels[-1]
            parents = [hash_pair(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
            if len(nodes) % 2 == 1:
                parents.append(nodes[-1])
            levels.append(parents)
        self._levels = levels

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    def __len__(self) -> int:
        return len(self._levels[0])

    def proof(self, index: int) -> list[bytes]:
        """The sibling hashes from leaf ``index`` up to the root."""
        if not 0 <= index < len(self):
            raise MerkleError(
                f"leaf index {index} is out of range for a tree of {len(self)} leaves"
            )
        proof: list[bytes] = []
        position = index
        for nodes in self._levels[:-1]:
            sibling = position ^ 1
            if sibling < len(nodes):
                proof.append(nodes[sibling])
            position //= 2
        return proof


def verify_proof(proof: Sequence[bytes], *, root: bytes, leaf: bytes) -> bool:
    """``MerkleProof.verify`` in Python."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
