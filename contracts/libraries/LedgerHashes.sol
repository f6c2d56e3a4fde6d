// SPDX-License-Identifier: EUPL-1.2
pragma solidity ^0.8.24;

import {Receipt} from "../interfaces/IStadjerspasLedger.sol";

/// @title Hashes of the ledger's typed data, receipts and cohort leaves.
/// @dev The same definitions live in Python (`wallet.eip712`, `ledger.merkle`); a test pins both.
library LedgerHashes {
    /// @dev keccak256("PassToken(bytes32 passId,uint64 serial,uint64 expiry,uint64 amountCap)")
    bytes32 internal constant PASS_TOKEN_TYPEHASH =
        keccak256("PassToken(bytes32 passId,uint64 serial,uint64 expiry,uint64 amountCap)");

    /// @notice EIP-712 struct hash of a pass token.
    function passTokenHash(bytes32 passId, uint64 serial, uint64 expiry, uint64 amountCap)
        internal
        pure
        returns (bytes32 result)
    {
        bytes32 typeHash = PASS_TOKEN_TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            mstore(add(ptr, 0x20), passId)
            mstore(add(ptr, 0x40), serial)
            mstore(add(ptr, 0x60), expiry)
            mstore(add(ptr, 0x80), amountCap)
            result := keccak256(ptr, 0xa0)
        }
    }

    /// @notice Leaf of a receipt in the receipt tree of its transaction.
    function receiptLeaf(Receipt memory receipt) internal pure returns (bytes32) {
        return keccak256(abi.encode(receipt));
    }

    /// @notice Leaf of a cohort tree, as OpenZeppelin's StandardMerkleTree hashes `(uint256,bytes32,uint64)`.
    function cohortLeaf(uint256 index, bytes32 passId, uint64 amount) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(index, passId, amount))));
    }
}
