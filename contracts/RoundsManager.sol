// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title A minimal Livepeer RoundsManager: rounds of `roundLength` blocks, each initialised once,
/// remembering the block hash it was initialised with (the ticket auxData's creationRoundBlockHash).
/// The function names and semantics follow livepeer/protocol's RoundsManager; staking, inflation and
/// the Controller are left out.
contract RoundsManager {
    uint256 public roundLength;
    uint256 public lastInitializedRound;
    mapping(uint256 => bytes32) internal roundBlockHash;

    event NewRound(uint256 indexed round, bytes32 blockHash);

    constructor(uint256 _roundLength) {
        require(_roundLength > 0, "round length cannot be 0");
        roundLength = _roundLength;
        _initializeRound(); // a fresh chain has a usable round at once
    }

    function blockNum() public view returns (uint256) {
        return block.number;
    }

    function blockHash(uint256 _block) public view returns (bytes32) {
        require(_block < block.number, "can only retrieve past block hashes");
        require(block.number - _block <= 256, "can only retrieve hashes for last 256 blocks");
        return blockhash(_block);
    }

    function currentRound() public view returns (uint256) {
        return block.number / roundLength;
    }

    function currentRoundStartBlock() public view returns (uint256) {
        return currentRound() * roundLength;
    }

    function currentRoundInitialized() public view returns (bool) {
        return lastInitializedRound == currentRound();
    }

    function blockHashForRound(uint256 _round) public view returns (bytes32) {
        return roundBlockHash[_round];
    }

    /// Initialise the current round: its block hash is that of the block before this call's.
    function initializeRound() public {
        require(!currentRoundInitialized(), "round already initialized");
        _initializeRound();
    }

    function _initializeRound() internal {
        uint256 round = currentRound();
        lastInitializedRound = round;
        // A transaction runs in block 1 or later; only a call on the genesis state (gas estimation) sees 0.
        bytes32 hash = block.number > 0 ? blockhash(block.number - 1) : bytes32(0);
        roundBlockHash[round] = hash;
        emit NewRound(round, hash);
    }
}
