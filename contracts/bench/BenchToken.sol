// SPDX-License-Identifier: EUPL-1.2
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title Plain OpenZeppelin ERC-20, deployed only by the gas benchmark as the baseline that
///        token-based aid systems pay per transfer.
contract BenchToken is ERC20 {
    constructor(address holder, uint256 supply) ERC20("Benchmark Euro", "BEUR") {
        _mint(holder, supply);
    }
}
