// SPDX-License-Identifier: EUPL-1.2
pragma solidity ^0.8.24;

import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";

/// @title Merkle root over the receipts of one transaction.
/// @dev Pairs are hashed with OpenZeppelin's commutative keccak, so `MerkleProof.verify` checks proofs.
///      Level by level, node `2i` is hashed with node `2i + 1`; an odd last node moves up unchanged.
///      `ledger.merkle.receipt_root` in Python builds the same tree.
library ReceiptTree {
    /// @notice Root of `leaves[0:count]`; overwrites the array. `count` must be at least 1.
    function root(bytes32[] memory leaves, uint256 count) internal pure returns (bytes32) {
        while (count > 1) {
            uint256 half = count >> 1;
            for (uint256 i = 0; i < half; ++i) {
                leaves[i] = Hashes.commutativeKeccak256(leaves[2 * i], leaves[2 * i + 1]);
            }
            if (count & 1 == 1) {
                leaves[half] = leaves[count - 1];
                count = half + 1;
            } else {
                count = half;
            }
        }
        return leaves[0];
    }
}
