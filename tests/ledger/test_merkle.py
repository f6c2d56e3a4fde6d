"""`ledger.merkle`: tree shape, proofs, leaf hashes, and agreement with the contract's trees."""

from __future__ import annotations

import random

import pytest
from eth_abi import encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import (
    CohortLeaf,
    MerkleError,
    MerkleTree,
    ReceiptLeaf,
    cohort_leaf_hash,
    hash_pair,
    receipt_leaf_hash,
    verify_proof,
)
from tests.ledger.conftest import LedgerEnv


def _leaves(count: int, seed: int = 0) -> list[bytes]:
    return [keccak(seed.to_bytes(8, "big") + i.to_bytes(8, "big")) for i in range(count)]


def _reference_root(nodes: list[bytes]) -> bytes:
    """An independent statement of the shape: pair 2i with 2i+1, an odd last node moves up."""
    if len(nodes) == 1:
        return nodes[0]
    parents = [hash_pair(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
    if len(nodes) % 2:
        parents.append(nodes[-1])
    return _reference_root(parents)


def _all_proofs_verify(tree: MerkleTree, leaves: list[bytes]) -> None:
    for index, leaf in enumerate(leaves):
        assert verify_proof(tree.proof(index), root=tree.root, leaf=leaf), index


# ---------------------------------------------------------------- hashing


def test_hash_pair_is_commutative_and_sorted() -> None:
    a, b = _leaves(2)
    low, high = sorted((a, b))
    assert hash_pair(a, b) == hash_pair(b, a) == keccak(low + high)
    assert hash_pair(a, a) == keccak(a + a)


def test_cohort_leaf_is_the_standard_merkle_tree_double_hash() -> None:
    leaf = CohortLeaf(index=3, pass_id=b"\x07" * 32, amount=1_500)
    inner = keccak(encode(["uint256", "bytes32", "uint64"], [3, b"\x07" * 32, 1_500]))
    assert cohort_leaf_hash(leaf) == keccak(inner)
    assert cohort_leaf_hash(leaf) != cohort_leaf_hash(CohortLeaf(4, b"\x07" * 32, 1_500))
    assert cohort_leaf_hash(leaf) != cohort_leaf_hash(CohortLeaf(3, b"\x07" * 32, 1_501))


def test_receipt_leaf_is_the_abi_encoded_receipt() -> None:
    merchant = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    leaf = ReceiptLeaf(9, b"\x01" * 32, 2, merchant, 100, 350)
    expected = keccak(
        encode(
            ["uint256", "bytes32", "uint256", "address", "uint64", "uint64"],
            [9, b"\x01" * 32, 2, merchant, 100, 350],
        )
    )
    assert receipt_leaf_hash(leaf) == expected
    assert len(encode(["uint256"] * 6, [0] * 6)) == 192  # never 64 bytes: no node/leaf confusion


# ---------------------------------------------------------------- shapes


def test_one_leaf() -> None:
    (leaf,) = _leaves(1)
    tree = MerkleTree([leaf])
    assert tree.root == leaf
    assert tree.proof(0) == []
    assert len(tree) == 1
    assert verify_proof([], root=leaf, leaf=leaf)


def test_two_leaves() -> None:
    a, b = _leaves(2)
    tree = MerkleTree([a, b])
    assert tree.root == hash_pair(a, b)
    assert tree.proof(0) == [b]
    assert tree.proof(1) == [a]
    _all_proofs_verify(tree, [a, b])


def test_three_leaves_the_odd_one_moves_up() -> None:
    a, b, c = _leaves(3)
    tree = MerkleTree([a, b, c])
    assert tree.root == hash_pair(hash_pair(a, b), c)
    assert tree.proof(0) == [b, c]
    assert tree.proof(1) == [a, c]
    assert tree.proof(2) == [hash_pair(a, b)]
    _all_proofs_verify(tree, [a, b, c])


@pytest.mark.parametrize("count", [4, 5, 6, 7, 9, 17, 31, 33, 100])
def test_odd_and_even_sizes(count: int) -> None:
    leaves = _leaves(count, seed=count)
    tree = MerkleTree(leaves)
    assert tree.root == _reference_root(leaves)
    _all_proofs_verify(tree, leaves)


def test_thousand_leaves() -> None:
    leaves = _leaves(1_000, seed=1)
    tree = MerkleTree(leaves)
    assert tree.root == _reference_root(leaves)
    _all_proofs_verify(tree, leaves)
    assert max(len(tree.proof(i)) for i in range(1_000)) == 10  # ceil(log2(1000))
    assert not verify_proof(tree.proof(0), root=tree.root, leaf=leaves[1])


def test_duplicate_leaves_still_prove() -> None:
    (a,) = _leaves(1)
    tree = MerkleTree([a, a, a])
    assert tree.root == hash_pair(keccak(a + a), a)
    _all_proofs_verify(tree, [a, a, a])


# ---------------------------------------------------------------- errors


def test_empty_tree_is_refused() -> None:
    with pytest.raises(MerkleError, match="at least one leaf"):
        MerkleTree([])


@pytest.mark.parametrize("index", [-1, 3, 1_000])
def test_proof_index_out_of_range(index: int) -> None:
    with pytest.raises(MerkleError, match="out of range"):
        MerkleTree(_leaves(3)).proof(index)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_leaf_of_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(MerkleError, match="32-byte"):
        MerkleTree([*_leaves(2), b"\x01" * size])


# ---------------------------------------------------------------- properties

hashes = st.binary(min_size=32, max_size=32)


@settings(max_examples=150, deadline=None)
@given(leaves=st.lists(hashes, min_size=1, max_size=70), data=st.data())
def test_every_proof_verifies_and_the_root_matches_the_reference(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree(leaves)
    assert tree.root == _reference_root(leaves)
    index = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    proof = tree.proof(index)
    assert verify_proof(proof, root=tree.root, leaf=leaves[index])
    assert len(proof) <= max(1, (len(leaves) - 1).bit_length())


@settings(max_examples=150, deadline=None)
@given(leaves=st.lists(hashes, min_size=2, max_size=40, unique=True), data=st.data())
def test_a_proof_does_not_verify_another_leaf_or_root(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    other = data.draw(hashes.filter(lambda h: h not in leaves))
    proof = tree.proof(index)
    assert not verify_proof(proof, root=tree.root, leaf=other)
    assert not verify_proof(proof, root=keccak(tree.root), leaf=leaves[index])
    if proof:
        tampered = [keccak(proof[0]), *proof[1:]]
        assert not verify_proof(tampered, root=tree.root, leaf=leaves[index])


# ---------------------------------------------------------------- against the contract


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_receipt_root_equals_the_contracts(ledger: LedgerEnv, size: int) -> None:
    scheme = ledger.new_scheme()
    pids = [ledger.new_pass() for _ in range(size)]
    ledger.client.transact(ledger.issuer, "issueBatch", scheme, pids, [1_000] * size)
    requests = [
        ledger.redemption(pid, scheme_id=scheme, amount=10 + i, redemption_id=100 + i)
        for i, pid in enumerate(pids)
    ]

    result = ledger.client.transact(
        ledger.merchant, "redeemBatch", [request.as_tuple() for request in requests]
    )

    leaves = [
        ReceiptLeaf(100 + i, pid, scheme, ledger.merchant.address, 10 + i, 10 + i)
        for i, pid in enumerate(pids)
    ]
    tree = MerkleTree([receipt_leaf_hash(leaf) for leaf in leaves])
    (recorded,) = result.named("ReceiptsRecorded")
    assert recorded.args == {"root": tree.root, "count": size}
    assert ledger.client.contract.functions.receiptRecordedAt(tree.root).call() > 0
    # The last receipt (the odd one out for odd sizes) is reversible with its proof.
    receipt, root, proof = ledger.client.reversal_proof(result.events, 100 + size - 1)
    assert (receipt, root, proof) == (leaves[-1], tree.root, tree.proof(size - 1))
    ledger.client.transact(ledger.merchant, "reverse", receipt.as_tuple(), root, proof)
    assert ledger.client.balance_of(scheme, pids[-1]) == 1_000


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_cohort_proofs_are_accepted_by_claim(ledger: LedgerEnv, size: int) -> None:
    scheme = ledger.new_scheme()
    leaves = [CohortLeaf(i, keccak(b"pass-%d" % i), 100 * (i + 1)) for i in range(size)]
    tree = MerkleTree([cohort_leaf_hash(leaf) for leaf in leaves])
    total = sum(leaf.amount for leaf in leaves)
    ledger.client.transact(ledger.issuer, "issueCohort", scheme, tree.root, size, total)

    for position in reversed(range(size)):
        leaf = leaves[position]
        claim = (tree.root, leaf.index, leaf.pass_id, leaf.amount, tree.proof(position))
        ledger.client.transact(ledger.outsider, "claim", claim)
        assert ledger.client.balance_of(scheme, leaf.pass_id) == leaf.amount
    assert all(ledger.client.is_claimed(tree.root, i) for i in range(size))


def test_thousand_holder_cohort_proofs_are_accepted(ledger: LedgerEnv) -> None:
    scheme = ledger.new_scheme(budget_cap=10**9)
    rng = random.Random(1000)
    leaves = [CohortLeaf(i, rng.randbytes(32), rng.randint(1, 50_000)) for i in range(1_000)]
    tree = MerkleTree([cohort_leaf_hash(leaf) for leaf in leaves])
    total = sum(leaf.amount for leaf in leaves)
    ledger.client.transact(ledger.issuer, "issueCohort", scheme, tree.root, 1_000, total)
    assert ledger.client.scheme_of(scheme).committed == total

    for position in (0, 1, 255, 256, 511, 998, 999):
        leaf = leaves[position]
        claim = (tree.root, leaf.index, leaf.pass_id, leaf.amount, tree.proof(position))
        ledger.client.transact(ledger.holder, "claim", claim)
        assert ledger.client.balance_of(scheme, leaf.pass_id) == leaf.amount
        assert ledger.client.is_claimed(tree.root, position)
    assert not ledger.client.is_claimed(tree.root, 2)
