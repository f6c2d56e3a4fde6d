// SPDX-License-Identifier: EUPL-1.2
pragma solidity ^0.8.24;

/// @notice The kind of benefit a scheme grants.
/// @dev Budget: an amount of euro cents (e.g. the children's package).
///      Uses: a number of uses (e.g. 10 swimming entries), each reimbursed at `unitValue` cents.
///      Discount: an offer (percentage or fixed amount off a purchase), optionally with a use limit;
///      the municipality reimburses `reimburseBps` of every discount granted.
enum SchemeKind {
    Budget,
    Uses,
    Discount
}

/// @notice The terms of a scheme as set when it is created. Amounts are euro cents, uses are counts.
struct SchemeTerms {
    SchemeKind kind;
    /// @dev First second (unix time) at which redemptions are accepted.
    uint40 validFrom;
    /// @dev Last second (unix time) at which redemptions are accepted; entitlements expire after it.
    uint40 validUntil;
    /// @dev Maximum debited per redemption (Budget: cents, Uses: uses, Discount: discount cents); 0 = none.
    uint64 perRedemptionCap;
    /// @dev Uses: cents owed to the merchant per use. Otherwise 0.
    uint64 unitValue;
    /// @dev Discount: percentage off in basis points (1..10000), or 0 when `discountFixed` applies.
    uint16 discountBps;
    /// @dev Discount: share of each discount the municipality reimburses, in basis points.
    uint16 reimburseBps;
    /// @dev Discount: fixed cents off a purchase (capped at the purchase price) when `discountBps` is 0.
    uint64 discountFixed;
    /// @dev Protected reserve in cents: issued value (Budget, Uses) or reimbursed discounts (Discount)
    ///      can never exceed it.
    uint128 budgetCap;
    /// @dev When true every active merchant may redeem; otherwise only merchants allowed explicitly.
    bool openToAllMerchants;
}

/// @notice A redemption request as submitted by a merchant, carrying the holder's pass token.
/// @dev The token fields (`passId`, `serial`, `expiry`, `amountCap`) are the EIP-712 `PassToken` signed
///      by the pass's holder key or by a pass signer; `r` and `vs` are its EIP-2098 compact signature.
struct Redemption {
    uint256 redemptionId;
    bytes32 passId;
    uint256 schemeId;
    /// @dev Budget: cents to debit. Uses: number of uses. Discount: purchase price in cents.
    uint64 amount;
    uint64 serial;
    uint64 expiry;
    uint64 amountCap;
    bytes32 r;
    bytes32 vs;
}

/// @notice What a redemption did, committed to in the receipt root of its transaction.
struct Receipt {
    uint256 redemptionId;
    bytes32 passId;
    uint256 schemeId;
    address merchant;
    /// @dev Taken from the entitlement (cents or uses; 0 for an unlimited discount).
    uint64 debited;
    /// @dev Owed to the merchant by the municipality, in cents.
    uint64 credited;
}

/// @notice A holder's share of a cohort issued by Merkle root, presented on first use.
struct CohortClaim {
    bytes32 root;
    uint256 index;
    bytes32 passId;
    uint64 amount;
    bytes32[] proof;
}

/// @title Stadjerspas ledger: passes, schemes, entitlements, redemptions, reversals and settlements.
/// @notice Personal data never reaches this contract: a pass appears only as its keyed pseudonym `passId`.
interface IStadjerspasLedger {
    // ---------------------------------------------------------------- events

    /// @notice A pass pseudonym was registered, with an optional holder key and card serial.
    event PassRegistered(bytes32 indexed passId, address holderKey, uint64 cardSerial);
    /// @notice The holder key of a pass was set or cleared.
    event HolderKeyChanged(bytes32 indexed passId, address holderKey);
    /// @notice The printed card of a pass was replaced; tokens of `oldSerial` are revoked.
    event CardReplaced(bytes32 indexed passId, uint64 oldSerial, uint64 newSerial);
    /// @notice A pass was blocked (`blocked` true) or unblocked.
    event PassBlockStatusChanged(bytes32 indexed passId, bool blocked);

    /// @notice A scheme was created with id `schemeId`.
    event SchemeCreated(uint256 indexed schemeId, SchemeTerms terms);
    /// @notice A merchant was allowed (or no longer allowed) to redeem a scheme.
    event MerchantAllowanceChanged(uint256 indexed schemeId, address indexed merchant, bool allowed);

    /// @notice `amount` (cents or uses) was added to the entitlement of `passId` in `schemeId`.
    event EntitlementIssued(uint256 indexed schemeId, bytes32 indexed passId, uint64 amount);
    /// @notice `amounts[i]` was added to the entitlement of `passIds[i]` in `schemeId` (one batch).
    event EntitlementsIssued(uint256 indexed schemeId, bytes32[] passIds, uint64[] amounts);
    /// @notice A cohort was issued by Merkle root, committing `totalValue` cents of the scheme budget.
    event CohortIssued(uint256 indexed schemeId, bytes32 indexed root, uint64 holderCount, uint128 totalAmount);
    /// @notice Leaf `index` of cohort `root` was claimed into the entitlement of `passId`.
    event CohortClaimed(bytes32 indexed root, uint256 indexed index, bytes32 indexed passId, uint64 amount);
    /// @notice The remaining entitlement of an ended scheme was written off.
    event EntitlementExpired(uint256 indexed schemeId, bytes32 indexed passId, uint64 amount);

    /// @notice A redemption was accepted. `amount` is as requested, `discount` the discount granted
    ///         (Discount schemes), `debited` what left the entitlement, `credited` what is owed to `merchant`.
    event Redeemed(
        uint256 indexed redemptionId,
        bytes32 indexed passId,
        uint256 indexed schemeId,
        address merchant,
        uint64 amount,
        uint64 debited,
        uint64 discount,
        uint64 credited
    );
    /// @notice An item of a batch was refused; `reason` is the selector of the custom error a single
    ///         redemption would have reverted with, `detail` its second argument.
    event RedemptionRejected(uint256 indexed redemptionId, bytes4 reason, bytes32 detail);
    /// @notice The receipts of the redemptions accepted by one call were committed to `root`.
    event ReceiptsRecorded(bytes32 indexed root, uint256 count);
    /// @notice A redemption was reversed: `debited` returned to the entitlement, `credited` taken off the owed.
    event Reversed(
        uint256 indexed redemptionId,
        bytes32 indexed passId,
        uint256 indexed schemeId,
        address merchant,
        uint64 debited,
        uint64 credited
    );
    /// @notice The municipality recorded that it paid `merchant` `amount` cents under `reference`.
    event Settled(address indexed merchant, bytes32 indexed paymentReference, uint128 amount);
    /// @notice The reversal window changed.
    event ReversalWindowChanged(uint64 window);

    // ---------------------------------------------------------------- errors: passes

    error PassAlreadyRegistered(bytes32 passId);
    error PassUnknown(bytes32 passId);
    error PassBlockStatusUnchanged(bytes32 passId, bool blocked);
    error CardSerialInvalid(bytes32 passId, uint64 serial);
    error PassesLengthMismatch(uint256 passIds, uint256 cardSerials);

    // ---------------------------------------------------------------- errors: schemes and issuance

    error SchemeTermsInvalid(string reason);
    error SchemeUnknown(uint256 schemeId);
    error SchemeEnded(uint256 schemeId, uint40 validUntil);
    error SchemeStillValid(uint256 schemeId, uint40 validUntil);
    error SchemeBudgetExceeded(uint256 schemeId, uint256 requested, uint256 available);
    error IssuanceAmountZero(bytes32 passId);
    error IssuanceLengthMismatch(uint256 passIds, uint256 amounts);
    error CohortExists(bytes32 root);
    error CohortUnknown(bytes32 root);
    error CohortAlreadyClaimed(bytes32 root, uint256 index);
    error CohortProofInvalid(bytes32 root, uint256 index);
    error CohortTotalExceeded(bytes32 root, uint256 amount, uint256 unclaimed);
    error EntitlementOverflow(uint256 schemeId, bytes32 passId, uint256 balance);

    // ---------------------------------------------------------------- errors: redemption
    // Each takes the redemption id and one detail word, so a batch can report them as
    // `RedemptionRejected(redemptionId, selector, detail)`.

    error RedemptionIdUsed(uint256 redemptionId, uint256 redemptionIdAgain);
    error RedemptionSchemeUnknown(uint256 redemptionId, uint256 schemeId);
    error RedemptionSchemeNotStarted(uint256 redemptionId, uint256 validFrom);
    error RedemptionSchemeEnded(uint256 redemptionId, uint256 validUntil);
    error RedemptionMerchantNotAllowed(uint256 redemptionId, address merchant);
    error RedemptionPassUnknown(uint256 redemptionId, bytes32 passId);
    error RedemptionPassBlocked(uint256 redemptionId, bytes32 passId);
    error RedemptionTokenExpired(uint256 redemptionId, uint256 expiry);
    error RedemptionCardRevoked(uint256 redemptionId, uint256 serial);
    error RedemptionAmountZero(uint256 redemptionId, uint256 amount);
    error RedemptionAmountOverTokenCap(uint256 redemptionId, uint256 amountCap);
    /// @notice A printed-card token without an amount cap (a card never moves more than its cap).
    error RedemptionCardUncapped(uint256 redemptionId, uint256 serial);
    /// @notice The short-lived token was already redeemed by another merchant, or a newer token of the pass
    ///         was: a token serves one checkout.
    error RedemptionTokenUsed(uint256 redemptionId, bytes32 passId);
    error RedemptionAmountOverSchemeCap(uint256 redemptionId, uint256 perRedemptionCap);
    error RedemptionAmountOverBalance(uint256 redemptionId, uint256 available);
    /// @notice The scheme's budget cannot reimburse this discount (the detail is always 0: a terminal is not
    ///         told how much of the budget is left).
    error RedemptionBudgetExhausted(uint256 redemptionId, uint256 available);
    error RedemptionSignatureInvalid(uint256 redemptionId, bytes32 passId);
    error RedemptionSignerNotAllowed(uint256 redemptionId, address signer);

    // ---------------------------------------------------------------- errors: reversal and settlement

    error ReversalUnknownRedemption(uint256 redemptionId);
    error ReversalAlreadyDone(uint256 redemptionId);
    error ReversalReceiptInvalid(uint256 redemptionId, bytes32 root);
    error ReversalWindowClosed(uint256 redemptionId, uint256 deadline);
    error ReversalNotMerchant(uint256 redemptionId, address caller);
    error ReversalExceedsOwed(uint256 redemptionId, uint256 owed);
    error SettlementAmountZero(address merchant);
    error SettlementExceedsOwed(address merchant, uint256 amount, uint256 owed);
    error SettlementReferenceUsed(address merchant, bytes32 paymentReference);

    // ---------------------------------------------------------------- passes

    /// @notice Registers a pass pseudonym. `holderKey` may be zero; `cardSerial` 0 means no card yet.
    function registerPass(bytes32 passId, address holderKey, uint64 cardSerial) external;
    /// @notice Registers many passes without holder keys (enrolment of a cohort, migration of an old
    /// system). `cardSerials` is empty (no cards yet) or holds one serial per pass, 0 meaning no card.
    function registerPasses(bytes32[] calldata passIds, uint64[] calldata cardSerials) external;
    /// @notice Sets (or clears, with zero) the key the holder's app signs pass tokens with.
    function setHolderKey(bytes32 passId, address holderKey) external;
    /// @notice Replaces the printed card: tokens with any other serial stop working. 0 revokes every card.
    function replaceCard(bytes32 passId, uint64 newSerial) external;
    /// @notice Blocks a lost or misused pass: nothing can be redeemed with it until it is unblocked.
    function blockPass(bytes32 passId) external;
    /// @notice Lifts a block.
    function unblockPass(bytes32 passId) external;

    // ---------------------------------------------------------------- schemes and issuance

    /// @notice Creates a scheme and returns its id (1, 2, ...).
    function createScheme(SchemeTerms calldata terms) external returns (uint256 schemeId);
    /// @notice Allows or disallows a merchant for a scheme that is not open to all merchants.
    function setMerchantAllowed(uint256 schemeId, address merchant, bool allowed) external;
    /// @notice Adds `amount` to one pass's entitlement, within the scheme budget.
    function issue(uint256 schemeId, bytes32 passId, uint64 amount) external;
    /// @notice Adds `amounts[i]` to the entitlement of `passIds[i]`; all or nothing.
    function issueBatch(uint256 schemeId, bytes32[] calldata passIds, uint64[] calldata amounts) external;
    /// @notice Issues to a whole cohort by Merkle root; each holder claims its leaf on first use.
    ///         Leaves are `keccak256(bytes.concat(keccak256(abi.encode(index, passId, amount))))`.
    function issueCohort(uint256 schemeId, bytes32 root, uint64 holderCount, uint128 totalAmount) external;
    /// @notice Claims a cohort leaf into the pass's entitlement. Anyone may submit a valid proof.
    function claim(CohortClaim calldata cohortClaim) external;
    /// @notice Writes off what is left of entitlements of a scheme that has ended.
    function expire(uint256 schemeId, bytes32[] calldata passIds) external;

    // ---------------------------------------------------------------- redemption, reversal, settlement

    /// @notice Redeems against a pass token; reverts with a `Redemption...` error when refused.
    function redeem(Redemption calldata redemption) external;
    /// @notice Claims a cohort leaf if not yet claimed, then redeems.
    function claimAndRedeem(CohortClaim calldata cohortClaim, Redemption calldata redemption) external;
    /// @notice Redeems many; a refused item emits `RedemptionRejected` and does not affect the others.
    /// @return accepted The number of redemptions accepted.
    function redeemBatch(Redemption[] calldata redemptions) external returns (uint256 accepted);
    /// @notice Reverses a redemption within the reversal window, restoring exactly what it took.
    function reverse(Receipt calldata receipt, bytes32 root, bytes32[] calldata proof) external;
    /// @notice Records that the municipality paid `merchant` `amount` cents under a payment reference.
    function settle(address merchant, uint128 amount, bytes32 paymentReference) external;
    /// @notice Sets how long after a redemption it may still be reversed, in seconds.
    function setReversalWindow(uint64 window) external;
    /// @notice Stops every state change except role management and unpausing until `unpause`.
    function pause() external;
    /// @notice Resumes after `pause`.
    function unpause() external;
}
