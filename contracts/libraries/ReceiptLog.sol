// SPDX-License-Identifier: EUPL-1.2
pragma solidity ^0.8.24;

/// @title When each receipt root was recorded, in storage slots that are reused once no receipt under
///        the root can be reversed any more.
/// @dev A root lives in ring slot `root mod SLOTS` as one word: the root's top 192 bits and the time it
///      was recorded. A slot whose root is older than the reversal window is rewritten by the next root
///      that falls on it: a write to a used slot costs 5,000 gas where a fresh one costs 22,100. A root
///      whose slot still holds a reversible root goes to an overflow mapping instead. A slot matches on
///      208 bits of the root (192 stored, 16 of the index): no root can be made to pass for another
///      (that takes a second preimage of keccak256 on 208 bits).
///
///      A root whose slot was reused reads as unknown. Slots are reused only after the window that
///      applied at the time, so lengthening the window later does not bring such roots back.
library ReceiptLog {
    uint256 internal constant SLOTS = 1 << 16;
    uint256 private constant _INDEX_MASK = SLOTS - 1;
    uint256 private constant _TIME_BITS = 64;

    struct Log {
        /// @dev Seconds after its recording during which a receipt may be reversed.
        uint64 reversalWindow;
        bytes32[SLOTS] ring;
        mapping(bytes32 root => uint64 recordedAt) overflow;
    }

    /// @notice Records `root` as recorded at `timestamp`.
    function record(Log storage log, bytes32 root, uint64 timestamp) internal {
        uint256 index = uint256(root) & _INDEX_MASK;
        uint256 held = uint256(log.ring[index]);
        if (held == 0 || uint256(uint64(held)) + log.reversalWindow < timestamp) {
            log.ring[index] = bytes32(((uint256(root) >> _TIME_BITS) << _TIME_BITS) | timestamp);
        } else {
            log.overflow[root] = timestamp;
        }
    }

    /// @notice When `root` was recorded; 0 if it is unknown, or if its slot was reused after the window.
    function recordedAt(Log storage log, bytes32 root) internal view returns (uint64) {
        uint256 held = uint256(log.ring[uint256(root) & _INDEX_MASK]);
        if (held != 0 && held >> _TIME_BITS == uint256(root) >> _TIME_BITS) return uint64(held);
        return log.overflow[root];
    }
}
