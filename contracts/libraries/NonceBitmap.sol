// SPDX-License-Identifier: EUPL-1.2
pragma solidity ^0.8.24;

/// @title An unordered set of used ids, one bit per id, 256 ids per storage word (as in Permit2).
/// @dev Ids allocated densely share words, so marking one usually rewrites an already non-zero word.
library NonceBitmap {
    struct Bitmap {
        mapping(uint256 wordPosition => uint256 bits) words;
    }

    /// @notice Whether `id` is marked.
    function isSet(Bitmap storage bitmap, uint256 id) internal view returns (bool) {
        return bitmap.words[id >> 8] & (uint256(1) << (id & 0xff)) != 0;
    }

    /// @notice Marks `id`; returns false (and changes nothing) if it was marked already.
    function trySet(Bitmap storage bitmap, uint256 id) internal returns (bool) {
        uint256 wordPosition = id >> 8;
        uint256 mask = uint256(1) << (id & 0xff);
        uint256 word = bitmap.words[wordPosition];
        if (word & mask != 0) return false;
        bitmap.words[wordPosition] = word | mask;
        return true;
    }
}
