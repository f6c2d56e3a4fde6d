// SPDX-License-Identifier: EUPL-1.2
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

import {
    IStadjerspasLedger,
    SchemeKind,
    SchemeTerms,
    Redemption,
    Receipt,
    CohortClaim
} from "./interfaces/IStadjerspasLedger.sol";
import {LedgerHashes} from "./libraries/LedgerHashes.sol";
import {NonceBitmap} from "./libraries/NonceBitmap.sol";
import {ReceiptLog} from "./libraries/ReceiptLog.sol";
import {ReceiptTree} from "./libraries/ReceiptTree.sol";

/// @title Stadjerspas ledger
/// @notice Records schemes, entitlements, redemptions, reversals and settlements of a city pass, and
///         enforces its rules: roles, validity windows, budgets, balances and one-time redemption ids.
contract StadjerspasLedger is IStadjerspasLedger, AccessControl, Pausable, EIP712 {
    using NonceBitmap for NonceBitmap.Bitmap;
    using ReceiptLog for ReceiptLog.Log;

    bytes32 public constant ISSUER_ROLE = keccak256("ISSUER_ROLE");
    bytes32 public constant MERCHANT_ROLE = keccak256("MERCHANT_ROLE");
    bytes32 public constant PASS_SIGNER_ROLE = keccak256("PASS_SIGNER_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    /// @notice An entitlement holding this many uses never runs out (an unlimited discount offer).
    uint64 public constant UNLIMITED = type(uint64).max;

    /// @notice The largest amount, balance or card serial the ledger accepts (2**63 - 1), so that every
    ///         off-chain store (signed 64-bit integers) keeps them exactly. `UNLIMITED` is the exception.
    uint64 public constant MAX_AMOUNT = uint64(type(int64).max);

    struct PassRecord {
        address holderKey;
        uint64 cardSerial;
        bool registered;
        bool blocked;
    }

    struct SchemeRecord {
        // slot 0: everything a Budget or Uses redemption reads
        SchemeKind kind;
        uint40 validFrom;
        uint40 validUntil;
        bool openToAllMerchants;
        uint16 discountBps;
        uint16 reimburseBps;
        uint64 perRedemptionCap;
        uint64 unitValue;
        // slot 1: the budget, read and written together
        uint128 budgetCap;
        uint128 committed;
        // slot 2
        uint64 discountFixed;
    }

    struct MerchantAccount {
        uint128 redeemed;
        uint128 reversed;
    }

    /// @dev What one redemption takes from the entitlement, grants as discount and credits the merchant.
    struct Amounts {
        uint64 debited;
        uint64 discount;
        uint64 credited;
    }

    /// @dev The newest short-lived pass token a pass was redeemed with, and the merchant who redeemed it.
    ///      `tag` is the low 32 bits of the token's EIP-712 digest: it tells tokens of one expiry apart.
    struct TokenUse {
        address merchant;
        uint64 expiry;
        uint32 tag;
    }

    struct CohortRecord {
        uint64 schemeId;
        /// @dev What claims may still credit: the declared total minus what was claimed.
        uint128 unclaimed;
    }

    mapping(bytes32 passId => PassRecord) private _passes;
    mapping(uint256 schemeId => SchemeRecord) private _schemes;
    uint256 private _schemeCount;
    mapping(uint256 schemeId => mapping(address merchant => bool)) private _allowedMerchants;
    mapping(uint256 schemeId => mapping(bytes32 passId => uint64)) private _balances;
    mapping(bytes32 root => CohortRecord) private _cohorts;
    mapping(bytes32 root => NonceBitmap.Bitmap) private _cohortClaims;
    NonceBitmap.Bitmap private _redemptionIds;
    NonceBitmap.Bitmap private _reversedIds;
    ReceiptLog.Log private _receipts;
    mapping(bytes32 passId => TokenUse) private _tokenUses;
    mapping(address merchant => MerchantAccount) private _merchantAccounts;
    mapping(address merchant => uint256) private _settled;
    mapping(address merchant => mapping(bytes32 paymentReference => bool)) private _settlementReferences;

    constructor(address admin, uint64 initialReversalWindow) EIP712("Stadjerspas Ledger", "1") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _receipts.reversalWindow = initialReversalWindow;
        emit ReversalWindowChanged(initialReversalWindow);
    }

    // ================================================================= passes

    /// @inheritdoc IStadjerspasLedger
    function registerPass(bytes32 passId, address holderKey, uint64 cardSerial)
        external
        onlyRole(ISSUER_ROLE)
        whenNotPaused
    {
        PassRecord storage pass = _passes[passId];
        if (pass.registered) revert PassAlreadyRegistered(passId);
        if (cardSerial > MAX_AMOUNT) revert CardSerialInvalid(passId, cardSerial);
        pass.registered = true;
        pass.holderKey = holderKey;
        pass.cardSerial = cardSerial;
        emit PassRegistered(passId, holderKey, cardSerial);
    }

    /// @inheritdoc IStadjerspasLedger
    function registerPasses(bytes32[] calldata passIds, uint64[] calldata cardSerials)
        external
        onlyRole(ISSUER_ROLE)
        whenNotPaused
    {
        if (cardSerials.length != 0 && cardSerials.length != passIds.length) {
            revert PassesLengthMismatch(passIds.length, cardSerials.length);
        }
        bool withSerials = cardSerials.length != 0;
        for (uint256 i = 0; i < passIds.length; ++i) {
            PassRecord storage pass = _passes[passIds[i]];
            if (pass.registered) revert PassAlreadyRegistered(passIds[i]);
            uint64 cardSerial = withSerials ? cardSerials[i] : 0;
            if (cardSerial > MAX_AMOUNT) revert CardSerialInvalid(passIds[i], cardSerial);
            pass.registered = true;
            if (cardSerial != 0) pass.cardSerial = cardSerial;
            emit PassRegistered(passIds[i], address(0), cardSerial);
        }
    }

    /// @inheritdoc IStadjerspasLedger
    function setHolderKey(bytes32 passId, address holderKey) external onlyRole(ISSUER_ROLE) whenNotPaused {
        PassRecord storage pass = _registeredPass(passId);
        pass.holderKey = holderKey;
        emit HolderKeyChanged(passId, holderKey);
    }

    /// @inheritdoc IStadjerspasLedger
    function replaceCard(bytes32 passId, uint64 newSerial) external onlyRole(ISSUER_ROLE) whenNotPaused {
        PassRecord storage pass = _registeredPass(passId);
        uint64 oldSerial = pass.cardSerial;
        if ((newSerial != 0 && newSerial == oldSerial) || newSerial > MAX_AMOUNT) {
            revert CardSerialInvalid(passId, newSerial);
        }
        pass.cardSerial = newSerial;
        emit CardReplaced(passId, oldSerial, newSerial);
    }

    /// @inheritdoc IStadjerspasLedger
    function blockPass(bytes32 passId) external onlyRole(ISSUER_ROLE) whenNotPaused {
        _setBlocked(passId, true);
    }

    /// @inheritdoc IStadjerspasLedger
    function unblockPass(bytes32 passId) external onlyRole(ISSUER_ROLE) whenNotPaused {
        _setBlocked(passId, false);
    }

    // ================================================================= schemes and issuance

    /// @inheritdoc IStadjerspasLedger
    function createScheme(SchemeTerms calldata terms)
        external
        onlyRole(ISSUER_ROLE)
        whenNotPaused
        returns (uint256 schemeId)
    {
        _checkTerms(terms);
        schemeId = ++_schemeCount;
        SchemeRecord storage scheme = _schemes[schemeId];
        scheme.kind = terms.kind;
        scheme.validFrom = terms.validFrom;
        scheme.validUntil = terms.validUntil;
        scheme.openToAllMerchants = terms.openToAllMerchants;
        scheme.discountBps = terms.discountBps;
        scheme.reimburseBps = terms.reimburseBps;
        scheme.perRedemptionCap = terms.perRedemptionCap;
        scheme.unitValue = terms.unitValue;
        scheme.discountFixed = terms.discountFixed;
        scheme.budgetCap = terms.budgetCap;
        emit SchemeCreated(schemeId, terms);
    }

    /// @inheritdoc IStadjerspasLedger
    function setMerchantAllowed(uint256 schemeId, address merchant, bool allowed)
        external
        onlyRole(ISSUER_ROLE)
        whenNotPaused
    {
        _existingScheme(schemeId);
        _allowedMerchants[schemeId][merchant] = allowed;
        emit MerchantAllowanceChanged(schemeId, merchant, allowed);
    }

    /// @inheritdoc IStadjerspasLedger
    function issue(uint256 schemeId, bytes32 passId, uint64 amount) external onlyRole(ISSUER_ROLE) whenNotPaused {
        SchemeRecord storage scheme = _openScheme(schemeId);
        if (amount == 0) revert IssuanceAmountZero(passId);
        _commitBudget(schemeId, scheme, _issuedValue(scheme, amount));
        _credit(schemeId, passId, amount);
        emit EntitlementIssued(schemeId, passId, amount);
    }

    /// @inheritdoc IStadjerspasLedger
    function issueBatch(uint256 schemeId, bytes32[] calldata passIds, uint64[] calldata amounts)
        external
        onlyRole(ISSUER_ROLE)
        whenNotPaused
    {
        if (passIds.length != amounts.length) revert IssuanceLengthMismatch(passIds.length, amounts.length);
        SchemeRecord storage scheme = _openScheme(schemeId);
        uint256 total = 0;
        for (uint256 i = 0; i < passIds.length; ++i) {
            uint64 amount = amounts[i];
            if (amount == 0) revert IssuanceAmountZero(passIds[i]);
            total += amount;
            _credit(schemeId, passIds[i], amount);
        }
        _commitBudget(schemeId, scheme, _issuedValue(scheme, total));
        emit EntitlementsIssued(schemeId, passIds, amounts);
    }

    /// @inheritdoc IStadjerspasLedger
    function issueCohort(uint256 schemeId, bytes32 root, uint64 holderCount, uint128 totalAmount)
        external
        onlyRole(ISSUER_ROLE)
        whenNotPaused
    {
        SchemeRecord storage scheme = _openScheme(schemeId);
        if (totalAmount == 0) revert IssuanceAmountZero(root);
        CohortRecord storage cohort = _cohorts[root];
        if (cohort.schemeId != 0) revert CohortExists(root);
        _commitBudget(schemeId, scheme, _issuedValue(scheme, totalAmount));
        cohort.schemeId = uint64(schemeId);
        cohort.unclaimed = totalAmount;
        emit CohortIssued(schemeId, root, holderCount, totalAmount);
    }

    /// @inheritdoc IStadjerspasLedger
    function claim(CohortClaim calldata cohortClaim) external whenNotPaused {
        _claim(cohortClaim);
    }

    /// @inheritdoc IStadjerspasLedger
    function expire(uint256 schemeId, bytes32[] calldata passIds) external onlyRole(ISSUER_ROLE) whenNotPaused {
        SchemeRecord storage scheme = _existingScheme(schemeId);
        uint40 validUntil = scheme.validUntil;
        if (block.timestamp <= validUntil) revert SchemeStillValid(schemeId, validUntil);
        for (uint256 i = 0; i < passIds.length; ++i) {
            uint64 remaining = _balances[schemeId][passIds[i]];
            if (remaining == 0) continue;
            _balances[schemeId][passIds[i]] = 0;
            emit EntitlementExpired(schemeId, passIds[i], remaining);
        }
    }

    // ================================================================= redemption

    /// @inheritdoc IStadjerspasLedger
    function redeem(Redemption calldata redemption) external onlyRole(MERCHANT_ROLE) whenNotPaused {
        _redeemOne(redemption);
    }

    /// @inheritdoc IStadjerspasLedger
    function claimAndRedeem(CohortClaim calldata cohortClaim, Redemption calldata redemption)
        external
        onlyRole(MERCHANT_ROLE)
        whenNotPaused
    {
        if (!_cohortClaims[cohortClaim.root].isSet(cohortClaim.index)) _claim(cohortClaim);
        _redeemOne(redemption);
    }

    /// @inheritdoc IStadjerspasLedger
    function redeemBatch(Redemption[] calldata redemptions)
        external
        onlyRole(MERCHANT_ROLE)
        whenNotPaused
        returns (uint256 accepted)
    {
        bytes32[] memory leaves = new bytes32[](redemptions.length);
        for (uint256 i = 0; i < redemptions.length; ++i) {
            (bytes4 reason, bytes32 detail, bytes32 leaf) = _tryRedeem(redemptions[i], msg.sender);
            if (reason != bytes4(0)) {
                emit RedemptionRejected(redemptions[i].redemptionId, reason, detail);
            } else {
                leaves[accepted++] = leaf;
            }
        }
        if (accepted != 0) _recordReceipts(ReceiptTree.root(leaves, accepted), accepted);
    }

    /// @inheritdoc IStadjerspasLedger
    function reverse(Receipt calldata receipt, bytes32 root, bytes32[] calldata proof) external whenNotPaused {
        uint256 redemptionId = receipt.redemptionId;
        if (msg.sender != receipt.merchant && !hasRole(ISSUER_ROLE, msg.sender)) {
            revert ReversalNotMerchant(redemptionId, msg.sender);
        }
        if (!_redemptionIds.isSet(redemptionId)) revert ReversalUnknownRedemption(redemptionId);
        if (_reversedIds.isSet(redemptionId)) revert ReversalAlreadyDone(redemptionId);
        uint64 recordedAt = _receipts.recordedAt(root);
        if (recordedAt == 0 || !MerkleProof.verifyCalldata(proof, root, LedgerHashes.receiptLeaf(receipt))) {
            revert ReversalReceiptInvalid(redemptionId, root);
        }
        uint256 deadline = uint256(recordedAt) + _receipts.reversalWindow;
        if (block.timestamp > deadline) revert ReversalWindowClosed(redemptionId, deadline);
        MerchantAccount storage account = _merchantAccounts[receipt.merchant];
        uint256 owed = uint256(account.redeemed) - account.reversed - _settled[receipt.merchant];
        if (receipt.credited > owed) revert ReversalExceedsOwed(redemptionId, owed);

        _reversedIds.trySet(redemptionId);
        account.reversed += receipt.credited;
        if (receipt.debited != 0) _credit(receipt.schemeId, receipt.passId, receipt.debited);
        SchemeRecord storage scheme = _schemes[receipt.schemeId];
        if (scheme.kind == SchemeKind.Discount) scheme.committed -= receipt.credited;
        emit Reversed(
            redemptionId, receipt.passId, receipt.schemeId, receipt.merchant, receipt.debited, receipt.credited
        );
    }

    // ================================================================= settlement and administration

    /// @inheritdoc IStadjerspasLedger
    function settle(address merchant, uint128 amount, bytes32 paymentReference)
        external
        onlyRole(SETTLER_ROLE)
        whenNotPaused
    {
        if (amount == 0) revert SettlementAmountZero(merchant);
        if (_settlementReferences[merchant][paymentReference]) revert SettlementReferenceUsed(merchant, paymentReference);
        uint256 owed = owedTo(merchant);
        if (amount > owed) revert SettlementExceedsOwed(merchant, amount, owed);
        _settlementReferences[merchant][paymentReference] = true;
        _settled[merchant] += amount;
        emit Settled(merchant, paymentReference, amount);
    }

    /// @inheritdoc IStadjerspasLedger
    function setReversalWindow(uint64 window) external onlyRole(DEFAULT_ADMIN_ROLE) whenNotPaused {
        _receipts.reversalWindow = window;
        emit ReversalWindowChanged(window);
    }

    /// @inheritdoc IStadjerspasLedger
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @inheritdoc IStadjerspasLedger
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    // ================================================================= views

    /// @notice The on-chain record of a pass.
    function passOf(bytes32 passId)
        external
        view
        returns (bool registered, bool blocked, address holderKey, uint64 cardSerial)
    {
        PassRecord storage pass = _passes[passId];
        return (pass.registered, pass.blocked, pass.holderKey, pass.cardSerial);
    }

    /// @notice The terms of a scheme and how much of its budget is committed.
    function schemeOf(uint256 schemeId) external view returns (SchemeTerms memory terms, uint128 committed) {
        SchemeRecord storage scheme = _existingScheme(schemeId);
        terms = SchemeTerms({
            kind: scheme.kind,
            validFrom: scheme.validFrom,
            validUntil: scheme.validUntil,
            perRedemptionCap: scheme.perRedemptionCap,
            unitValue: scheme.unitValue,
            discountBps: scheme.discountBps,
            reimburseBps: scheme.reimburseBps,
            discountFixed: scheme.discountFixed,
            budgetCap: scheme.budgetCap,
            openToAllMerchants: scheme.openToAllMerchants
        });
        committed = scheme.committed;
    }

    /// @notice The number of schemes created; ids run from 1 to this.
    function schemeCount() external view returns (uint256) {
        return _schemeCount;
    }

    /// @notice Whether `merchant` was allowed explicitly for `schemeId`.
    function isMerchantAllowed(uint256 schemeId, address merchant) external view returns (bool) {
        return _allowedMerchants[schemeId][merchant];
    }

    /// @notice What is left of a pass's entitlement in a scheme (cents or uses; `UNLIMITED` for no limit).
    function balanceOf(uint256 schemeId, bytes32 passId) external view returns (uint64) {
        return _balances[schemeId][passId];
    }

    /// @notice The scheme a cohort root belongs to (0 if unknown).
    function cohortScheme(bytes32 root) external view returns (uint256) {
        return _cohorts[root].schemeId;
    }

    /// @notice Whether leaf `index` of cohort `root` was claimed.
    function isClaimed(bytes32 root, uint256 index) external view returns (bool) {
        return _cohortClaims[root].isSet(index);
    }

    /// @notice Whether a redemption id was used.
    function isRedemptionUsed(uint256 redemptionId) external view returns (bool) {
        return _redemptionIds.isSet(redemptionId);
    }

    /// @notice Whether a redemption was reversed.
    function isReversed(uint256 redemptionId) external view returns (bool) {
        return _reversedIds.isSet(redemptionId);
    }

    /// @notice When a receipt root was recorded (0 if unknown).
    function receiptRecordedAt(bytes32 root) external view returns (uint64) {
        return _receipts.recordedAt(root);
    }

    /// @notice Totals of a merchant in cents: credited by redemptions, taken back by reversals, paid out.
    function merchantAccount(address merchant)
        external
        view
        returns (uint128 redeemed, uint128 reversed, uint256 settled)
    {
        MerchantAccount storage account = _merchantAccounts[merchant];
        return (account.redeemed, account.reversed, _settled[merchant]);
    }

    /// @notice What the municipality still owes `merchant`, in cents.
    function owedTo(address merchant) public view returns (uint256) {
        MerchantAccount storage account = _merchantAccounts[merchant];
        return uint256(account.redeemed) - account.reversed - _settled[merchant];
    }

    /// @notice Whether a payment reference was used in a settlement with `merchant`.
    function isSettlementReferenceUsed(address merchant, bytes32 paymentReference) external view returns (bool) {
        return _settlementReferences[merchant][paymentReference];
    }

    /// @notice Seconds after a redemption during which it may be reversed.
    function reversalWindow() external view returns (uint64) {
        return _receipts.reversalWindow;
    }

    /// @notice The EIP-712 domain separator pass tokens are signed under.
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The EIP-712 type hash of `PassToken`.
    // solhint-disable-next-line func-name-mixedcase
    function PASS_TOKEN_TYPEHASH() external pure returns (bytes32) {
        return LedgerHashes.PASS_TOKEN_TYPEHASH;
    }

    /// @notice The EIP-712 digest a pass token's signature covers.
    function passTokenDigest(bytes32 passId, uint64 serial, uint64 expiry, uint64 amountCap)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(LedgerHashes.passTokenHash(passId, serial, expiry, amountCap));
    }

    // ================================================================= internals

    function _redeemOne(Redemption calldata redemption) private {
        (bytes4 reason, bytes32 detail, bytes32 leaf) = _tryRedeem(redemption, msg.sender);
        if (reason != bytes4(0)) {
            uint256 redemptionId = redemption.redemptionId;
            assembly ("memory-safe") {
                mstore(0x00, reason)
                mstore(0x04, redemptionId)
                mstore(0x24, detail)
                revert(0x00, 0x44)
            }
        }
        _recordReceipts(leaf, 1);
    }

    /// @dev Checks one redemption and applies it if every check passes. Returns the selector and detail of
    ///      the `Redemption...` error that refuses it, or zero and the receipt leaf when it was applied.
    function _tryRedeem(Redemption calldata r, address merchant)
        private
        returns (bytes4 reason, bytes32 detail, bytes32 leaf)
    {
        uint256 redemptionId = r.redemptionId;
        if (_redemptionIds.isSet(redemptionId)) return (RedemptionIdUsed.selector, bytes32(redemptionId), 0);

        SchemeRecord storage scheme = _schemes[r.schemeId];
        uint40 validUntil = scheme.validUntil;
        if (validUntil == 0) return (RedemptionSchemeUnknown.selector, bytes32(r.schemeId), 0);
        if (block.timestamp < scheme.validFrom) {
            return (RedemptionSchemeNotStarted.selector, bytes32(uint256(scheme.validFrom)), 0);
        }
        if (block.timestamp > validUntil) return (RedemptionSchemeEnded.selector, bytes32(uint256(validUntil)), 0);
        if (!scheme.openToAllMerchants && !_allowedMerchants[r.schemeId][merchant]) {
            return (RedemptionMerchantNotAllowed.selector, bytes32(uint256(uint160(merchant))), 0);
        }

        PassRecord storage pass = _passes[r.passId];
        if (!pass.registered) return (RedemptionPassUnknown.selector, r.passId, 0);
        if (pass.blocked) return (RedemptionPassBlocked.selector, r.passId, 0);
        if (block.timestamp > r.expiry) return (RedemptionTokenExpired.selector, bytes32(uint256(r.expiry)), 0);
        if (r.serial != 0 && r.serial != pass.cardSerial) {
            return (RedemptionCardRevoked.selector, bytes32(uint256(r.serial)), 0);
        }
        if (r.amount == 0) return (RedemptionAmountZero.selector, 0, 0);
        if (r.amount > MAX_AMOUNT) return (RedemptionAmountOverSchemeCap.selector, bytes32(uint256(MAX_AMOUNT)), 0);
        (reason, detail) = _checkTokenCap(r, scheme.kind);
        if (reason != bytes4(0)) return (reason, detail, 0);

        bytes32 digest;
        (reason, detail, digest) = _checkSignature(r, pass.holderKey);
        if (reason != bytes4(0)) return (reason, detail, 0);
        bool newToken;
        (reason, newToken) = _checkTokenUse(r, merchant, digest);
        if (reason != bytes4(0)) return (reason, r.passId, 0);

        Amounts memory amounts;
        (reason, detail, amounts) = _amounts(r, scheme);
        if (reason != bytes4(0)) return (reason, detail, 0);

        uint64 remaining = _balances[r.schemeId][r.passId];
        if (remaining < amounts.debited) {
            return (RedemptionAmountOverBalance.selector, bytes32(uint256(remaining)), 0);
        }
        if (scheme.kind == SchemeKind.Discount) {
            uint256 available = uint256(scheme.budgetCap) - scheme.committed;
            // the detail does not tell a terminal how much of the scheme's budget is left
            if (amounts.credited > available) return (RedemptionBudgetExhausted.selector, 0, 0);
            scheme.committed += amounts.credited;
        }
        if (remaining == UNLIMITED && scheme.kind == SchemeKind.Discount) amounts.debited = 0;
        else _balances[r.schemeId][r.passId] = remaining - amounts.debited;
        if (newToken) _tokenUses[r.passId] = TokenUse(merchant, r.expiry, uint32(uint256(digest)));
        return (bytes4(0), 0, _recordRedemption(r, merchant, amounts));
    }

    /// @dev The effects of an accepted redemption besides its balance: id used, merchant credited, event.
    function _recordRedemption(Redemption calldata r, address merchant, Amounts memory amounts)
        private
        returns (bytes32 leaf)
    {
        _redemptionIds.trySet(r.redemptionId);
        _merchantAccounts[merchant].redeemed += amounts.credited;
        emit Redeemed(
            r.redemptionId, r.passId, r.schemeId, merchant, r.amount, amounts.debited, amounts.discount, amounts.credited
        );
        return LedgerHashes.receiptLeaf(
            Receipt({
                redemptionId: r.redemptionId,
                passId: r.passId,
                schemeId: r.schemeId,
                merchant: merchant,
                debited: amounts.debited,
                credited: amounts.credited
            })
        );
    }

    /// @dev A token's `amountCap` bounds the amount. A printed card (a non-zero serial) must carry one: the
    ///      most a card moves without the holder's PIN. A card's cap bounds Budget and Uses redemptions;
    ///      a Discount takes one use and its grant is capped by the scheme.
    function _checkTokenCap(Redemption calldata r, SchemeKind kind) private pure returns (bytes4 reason, bytes32 detail) {
        if (r.serial != 0) {
            if (r.amountCap == 0) return (RedemptionCardUncapped.selector, bytes32(uint256(r.serial)));
            if (kind == SchemeKind.Discount) return (bytes4(0), 0);
        }
        if (r.amountCap != 0 && r.amount > r.amountCap) {
            return (RedemptionAmountOverTokenCap.selector, bytes32(uint256(r.amountCap)));
        }
        return (bytes4(0), 0);
    }

    /// @dev Checks that the pass token was signed by the pass's holder key or by a pass signer; returns the
    ///      token's EIP-712 digest.
    function _checkSignature(Redemption calldata r, address holderKey)
        private
        view
        returns (bytes4 reason, bytes32 detail, bytes32 digest)
    {
        digest = _hashTypedDataV4(LedgerHashes.passTokenHash(r.passId, r.serial, r.expiry, r.amountCap));
        (address signer, ECDSA.RecoverError recoverError,) = ECDSA.tryRecover(digest, r.r, r.vs);
        if (recoverError != ECDSA.RecoverError.NoError) return (RedemptionSignatureInvalid.selector, r.passId, digest);
        if (signer != holderKey && !hasRole(PASS_SIGNER_ROLE, signer)) {
            return (RedemptionSignerNotAllowed.selector, bytes32(uint256(uint160(signer))), digest);
        }
        return (bytes4(0), 0, digest);
    }

    /// @dev A short-lived token (serial 0) is spent by its first accepted redemption: after that only the
    ///      merchant who redeemed it may use it again (the rest of that checkout, other schemes of the same
    ///      scan), and a token of the pass that expires no later than the newest one used is refused.
    ///      `newToken` says the token must be recorded once the redemption is accepted. Printed cards are
    ///      bounded by their cap instead.
    function _checkTokenUse(Redemption calldata r, address merchant, bytes32 digest)
        private
        view
        returns (bytes4 reason, bool newToken)
    {
        if (r.serial != 0) return (bytes4(0), false);
        TokenUse memory used = _tokenUses[r.passId];
        if (r.expiry > used.expiry) return (bytes4(0), true);
        if (r.expiry == used.expiry && uint32(uint256(digest)) == used.tag && merchant == used.merchant) {
            return (bytes4(0), false);
        }
        return (RedemptionTokenUsed.selector, false);
    }

    /// @dev What a redemption debits from the entitlement, the discount it grants and what it credits the
    ///      merchant, by scheme kind; or the error that refuses an amount over the scheme's cap.
    function _amounts(Redemption calldata r, SchemeRecord storage scheme)
        private
        view
        returns (bytes4 reason, bytes32 detail, Amounts memory amounts)
    {
        SchemeKind kind = scheme.kind;
        uint64 cap = scheme.perRedemptionCap;
        if (kind == SchemeKind.Discount) {
            uint256 bps = scheme.discountBps;
            uint256 granted = bps != 0 ? (uint256(r.amount) * bps) / 10_000 : _min(scheme.discountFixed, r.amount);
            if (cap != 0 && granted > cap) granted = cap;
            amounts.debited = 1;
            amounts.discount = uint64(granted);
            amounts.credited = uint64((granted * scheme.reimburseBps) / 10_000);
            return (bytes4(0), 0, amounts);
        }
        if (cap != 0 && r.amount > cap) {
            return (RedemptionAmountOverSchemeCap.selector, bytes32(uint256(cap)), amounts);
        }
        amounts.debited = r.amount;
        if (kind == SchemeKind.Budget) {
            amounts.credited = r.amount;
            return (bytes4(0), 0, amounts);
        }
        uint256 value = uint256(r.amount) * scheme.unitValue;
        if (value > MAX_AMOUNT) return (RedemptionAmountOverSchemeCap.selector, bytes32(uint256(MAX_AMOUNT)), amounts);
        amounts.credited = uint64(value);
        return (bytes4(0), 0, amounts);
    }

    function _claim(CohortClaim calldata c) private {
        CohortRecord storage cohort = _cohorts[c.root];
        uint256 schemeId = cohort.schemeId;
        if (schemeId == 0) revert CohortUnknown(c.root);
        if (!MerkleProof.verifyCalldata(c.proof, c.root, LedgerHashes.cohortLeaf(c.index, c.passId, c.amount))) {
            revert CohortProofInvalid(c.root, c.index);
        }
        if (_cohortClaims[c.root].isSet(c.index)) revert CohortAlreadyClaimed(c.root, c.index);
        uint128 unclaimed = cohort.unclaimed;
        if (c.amount > unclaimed) revert CohortTotalExceeded(c.root, c.amount, unclaimed);
        _cohortClaims[c.root].trySet(c.index);
        cohort.unclaimed = unclaimed - c.amount;
        _credit(schemeId, c.passId, c.amount);
        emit CohortClaimed(c.root, c.index, c.passId, c.amount);
    }

    function _recordReceipts(bytes32 root, uint256 count) private {
        _receipts.record(root, uint64(block.timestamp));
        emit ReceiptsRecorded(root, count);
    }

    /// @dev Adds to an entitlement. Only a Discount entitlement can be `UNLIMITED`; any other balance
    ///      must stay below it.
    function _credit(uint256 schemeId, bytes32 passId, uint64 amount) private {
        uint64 remaining = _balances[schemeId][passId];
        if (_schemes[schemeId].kind == SchemeKind.Discount) {
            if (remaining == UNLIMITED) return;
            if (amount == UNLIMITED) {
                _balances[schemeId][passId] = UNLIMITED;
                return;
            }
        }
        uint256 updated = uint256(remaining) + amount;
        if (updated > MAX_AMOUNT) revert EntitlementOverflow(schemeId, passId, updated);
        _balances[schemeId][passId] = uint64(updated);
    }

    function _commitBudget(uint256 schemeId, SchemeRecord storage scheme, uint256 value) private {
        if (value == 0) return;
        uint256 available = uint256(scheme.budgetCap) - scheme.committed;
        if (value > available) revert SchemeBudgetExceeded(schemeId, value, available);
        scheme.committed += uint128(value);
    }

    /// @dev The budget an issuance commits: cents for Budget, uses times unit value for Uses, nothing for
    ///      Discount (its reimbursements are committed when they are granted).
    function _issuedValue(SchemeRecord storage scheme, uint256 amount) private view returns (uint256) {
        SchemeKind kind = scheme.kind;
        if (kind == SchemeKind.Budget) return amount;
        if (kind == SchemeKind.Uses) return amount * scheme.unitValue;
        return 0;
    }

    function _setBlocked(bytes32 passId, bool blocked) private {
        PassRecord storage pass = _registeredPass(passId);
        if (pass.blocked == blocked) revert PassBlockStatusUnchanged(passId, blocked);
        pass.blocked = blocked;
        emit PassBlockStatusChanged(passId, blocked);
    }

    function _registeredPass(bytes32 passId) private view returns (PassRecord storage pass) {
        pass = _passes[passId];
        if (!pass.registered) revert PassUnknown(passId);
    }

    function _existingScheme(uint256 schemeId) private view returns (SchemeRecord storage scheme) {
        scheme = _schemes[schemeId];
        if (scheme.validUntil == 0) revert SchemeUnknown(schemeId);
    }

    function _openScheme(uint256 schemeId) private view returns (SchemeRecord storage scheme) {
        scheme = _existingScheme(schemeId);
        if (block.timestamp > scheme.validUntil) revert SchemeEnded(schemeId, scheme.validUntil);
    }

    function _checkTerms(SchemeTerms calldata terms) private pure {
        if (terms.validUntil <= terms.validFrom) revert SchemeTermsInvalid("validUntil must be after validFrom");
        if (terms.budgetCap == 0) revert SchemeTermsInvalid("budgetCap must be positive");
        if (terms.discountBps > 10_000 || terms.reimburseBps > 10_000) {
            revert SchemeTermsInvalid("basis points must be at most 10000");
        }
        if (terms.kind == SchemeKind.Discount) {
            if ((terms.discountBps == 0) == (terms.discountFixed == 0)) {
                revert SchemeTermsInvalid("a discount needs exactly one of discountBps and discountFixed");
            }
            if (terms.discountBps != 0 && terms.perRedemptionCap == 0) {
                revert SchemeTermsInvalid("a percentage discount needs a perRedemptionCap");
            }
        } else if (terms.discountBps != 0 || terms.discountFixed != 0 || terms.reimburseBps != 0) {
            revert SchemeTermsInvalid("only a Discount scheme takes discount terms");
        }
        if (terms.kind == SchemeKind.Uses && terms.unitValue == 0) {
            revert SchemeTermsInvalid("a Uses scheme needs a unitValue");
        }
        if (terms.kind != SchemeKind.Uses && terms.unitValue != 0) {
            revert SchemeTermsInvalid("only a Uses scheme takes a unitValue");
        }
    }

    function _min(uint64 a, uint64 b) private pure returns (uint256) {
        return a < b ? a : b;
    }
}
