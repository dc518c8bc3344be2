// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import "./RoundsManager.sol";

/// @title A minimal Livepeer TicketBroker: senders' deposits and reserves, winning ticket redemption.
/// Function signatures, the ticket hash, auxData, the signature and win rules and the revert texts follow
/// livepeer/protocol's TicketBroker (MixinTicketBrokerCore, MixinReserve, MixinTicketProcessor).
/// Differences, for a small self-contained network: the amount a ticket wins is sent to its recipient in ETH
/// (Livepeer credits it as fees to the recipient's pool in its BondingManager); there is no BondingManager, so the
/// active transcoder pool counts as one and any recipient may claim from a reserve (Livepeer: active transcoders
/// only); redemption does not require the current round to be initialised (Livepeer's `currentRoundInitialized`),
/// so a local chain nobody initialises rounds on keeps paying until tickets expire; no pause, no Minter.
contract TicketBroker {
    struct Ticket {
        address recipient;
        address sender;
        uint256 faceValue;
        uint256 winProb;
        uint256 senderNonce;
        bytes32 recipientRandHash;
        bytes auxData;
    }

    struct Sender {
        uint256 deposit;
        uint256 withdrawRound;
    }

    struct ReserveInfo {
        uint256 fundsRemaining;
        uint256 claimedInCurrentRound;
    }

    uint256 internal constant POOL_SIZE = 1; // active transcoders sharing a reserve
    // secp256k1's n / 2: a signature with a greater s is the malleable twin of one with n - s (EIP-2).
    uint256 internal constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    RoundsManager public roundsManager;
    uint256 public unlockPeriod;
    uint256 public ticketValidityPeriod;
    mapping(bytes32 => bool) public usedTickets;
    mapping(address => Sender) internal senders;
    mapping(address => uint256) internal reserves;
    mapping(address => mapping(uint256 => uint256)) internal claimedInRound;
    mapping(address => mapping(uint256 => mapping(address => uint256))) internal claimedBy;

    event DepositFunded(address indexed sender, uint256 amount);
    event ReserveFunded(address indexed reserveHolder, uint256 amount);
    event ReserveClaimed(address indexed reserveHolder, address claimant, uint256 amount);
    event WinningTicketRedeemed(
        address indexed sender,
        address indexed recipient,
        uint256 faceValue,
        uint256 winProb,
        uint256 senderNonce,
        uint256 recipientRand,
        bytes auxData
    );
    event WinningTicketTransfer(address indexed sender, address indexed recipient, uint256 amount);
    event Unlock(address indexed sender, uint256 startRound, uint256 endRound);
    event UnlockCancelled(address indexed sender);
    event Withdrawal(address indexed sender, uint256 deposit, uint256 reserve);

    constructor(address _roundsManager, uint256 _unlockPeriod, uint256 _ticketValidityPeriod) {
        require(_ticketValidityPeriod > 0, "ticketValidityPeriod must be greater than 0");
        roundsManager = RoundsManager(_roundsManager);
        unlockPeriod = _unlockPeriod;
        ticketValidityPeriod = _ticketValidityPeriod;
    }

    // --- funding ---

    function fundDeposit() external payable {
        _processFunding();
        senders[msg.sender].deposit += msg.value;
        emit DepositFunded(msg.sender, msg.value);
    }

    function fundReserve() external payable {
        _processFunding();
        reserves[msg.sender] += msg.value;
        emit ReserveFunded(msg.sender, msg.value);
    }

    function fundDepositAndReserve(uint256 _depositAmount, uint256 _reserveAmount) external payable {
        require(msg.value == _depositAmount + _reserveAmount, "msg.value does not equal sum of deposit amount and reserve amount");
        _processFunding();
        senders[msg.sender].deposit += _depositAmount;
        reserves[msg.sender] += _reserveAmount;
        emit DepositFunded(msg.sender, _depositAmount);
        emit ReserveFunded(msg.sender, _reserveAmount);
    }

    /// Funding cancels an unlock in progress, as Livepeer's processDeposit / processReserve do.
    function _processFunding() internal {
        if (isUnlockInProgress(msg.sender)) {
            senders[msg.sender].withdrawRound = 0;
            emit UnlockCancelled(msg.sender);
        }
    }

    // --- redemption ---

    function redeemWinningTicket(Ticket memory _ticket, bytes memory _sig, uint256 _recipientRand) public {
        bytes32 ticketHash = getTicketHash(_ticket);
        _requireValidWinningTicket(_ticket, ticketHash, _sig, _recipientRand);
        Sender storage sender = senders[_ticket.sender];
        // A sender whose unlock period is over may withdraw at any moment: its funds no longer back tickets.
        require(sender.withdrawRound == 0 || roundsManager.currentRound() < sender.withdrawRound, "sender is unlocked");
        require(sender.deposit > 0 || reserves[_ticket.sender] > 0, "sender deposit and reserve are zero");
        usedTickets[ticketHash] = true;
        uint256 amount;
        if (_ticket.faceValue > sender.deposit) {
            amount = sender.deposit + _claimFromReserve(_ticket.sender, _ticket.recipient, _ticket.faceValue - sender.deposit);
            sender.deposit = 0;
        } else {
            amount = _ticket.faceValue;
            sender.deposit -= _ticket.faceValue;
        }
        if (amount > 0) {
            (bool ok, ) = payable(_ticket.recipient).call{value: amount}("");
            require(ok, "transfer to recipient failed");
            emit WinningTicketTransfer(_ticket.sender, _ticket.recipient, amount);
        }
        emit WinningTicketRedeemed(
            _ticket.sender, _ticket.recipient, _ticket.faceValue, _ticket.winProb, _ticket.senderNonce,
            _recipientRand, _ticket.auxData
        );
    }

    function batchRedeemWinningTickets(Ticket[] memory _tickets, bytes[] memory _sigs, uint256[] memory _recipientRands)
        public
    {
        for (uint256 i = 0; i < _tickets.length; i++) {
            redeemWinningTicket(_tickets[i], _sigs[i], _recipientRands[i]);
        }
    }

    /// Livepeer's reserve rule: per round, each of the pool's claimants may claim (remaining + claimed this round)
    /// / poolSize, less what it claimed this round already. The pool here is one (see the contract's notes).
    function _claimFromReserve(address _holder, address _claimant, uint256 _amount) internal returns (uint256) {
        uint256 round = roundsManager.currentRound();
        uint256 allocation = (reserves[_holder] + claimedInRound[_holder][round]) / POOL_SIZE;
        uint256 claimable = allocation - claimedBy[_holder][round][_claimant];
        if (claimable > reserves[_holder]) {
            claimable = reserves[_holder]; // other claimants took part of it this round
        }
        uint256 claimed = _amount < claimable ? _amount : claimable;
        if (claimed > 0) {
            reserves[_holder] -= claimed;
            claimedInRound[_holder][round] += claimed;
            claimedBy[_holder][round][_claimant] += claimed;
            emit ReserveClaimed(_holder, _claimant, claimed);
        }
        return claimed;
    }

    function _requireValidWinningTicket(Ticket memory _ticket, bytes32 _ticketHash, bytes memory _sig, uint256 _recipientRand)
        internal
        view
    {
        require(_ticket.recipient != address(0), "ticket recipient is null address");
        require(_ticket.sender != address(0), "ticket sender is null address");
        _requireValidTicketAuxData(_ticket.auxData);
        require(keccak256(abi.encodePacked(_recipientRand)) == _ticket.recipientRandHash, "recipientRand does not match recipientRandHash");
        require(!usedTickets[_ticketHash], "ticket is used");
        require(_isValidTicketSig(_ticket.sender, _sig, _ticketHash), "invalid signature over ticket hash");
        require(uint256(keccak256(abi.encodePacked(_sig, _recipientRand))) < _ticket.winProb, "ticket did not win");
    }

    function _requireValidTicketAuxData(bytes memory _auxData) internal view {
        require(_auxData.length == 64, "invalid length for ticket auxData: must be 64 bytes");
        (uint256 creationRound, bytes32 creationRoundBlockHash) = abi.decode(_auxData, (uint256, bytes32));
        bytes32 blockHash = roundsManager.blockHashForRound(creationRound);
        require(blockHash != bytes32(0), "ticket creationRound does not have a block hash");
        require(creationRoundBlockHash == blockHash, "ticket creationRoundBlockHash invalid for creationRound");
        require(creationRound + ticketValidityPeriod > roundsManager.currentRound(), "ticket is expired");
    }

    function _isValidTicketSig(address _sender, bytes memory _sig, bytes32 _ticketHash) internal pure returns (bool) {
        if (_sig.length != 65) {
            return false;
        }
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(_sig, 32))
            s := mload(add(_sig, 64))
            v := byte(0, mload(add(_sig, 96)))
        }
        if (uint256(s) > HALF_N || (v != 27 && v != 28)) {
            return false;
        }
        bytes32 digest = keccak256(abi.encodePacked("\x19Ethereum Signed Message:\n32", _ticketHash));
        address signer = ecrecover(digest, v, r, s);
        return signer != address(0) && signer == _sender;
    }

    /// The ticket hash: keccak256 of abi.encodePacked of its fields, auxData last.
    function getTicketHash(Ticket memory _ticket) public pure returns (bytes32) {
        return keccak256(
            abi.encodePacked(
                _ticket.recipient, _ticket.sender, _ticket.faceValue, _ticket.winProb, _ticket.senderNonce,
                _ticket.recipientRandHash, _ticket.auxData
            )
        );
    }

    // --- unlock and withdrawal ---

    function unlock() public {
        Sender storage sender = senders[msg.sender];
        require(sender.deposit > 0 || reserves[msg.sender] > 0, "sender deposit and reserve are zero");
        require(!isUnlockInProgress(msg.sender), "unlock already initiated");
        uint256 round = roundsManager.currentRound();
        sender.withdrawRound = round + unlockPeriod;
        emit Unlock(msg.sender, round, sender.withdrawRound);
    }

    function cancelUnlock() public {
        require(isUnlockInProgress(msg.sender), "no unlock request in progress");
        senders[msg.sender].withdrawRound = 0;
        emit UnlockCancelled(msg.sender);
    }

    function withdraw() public {
        Sender storage sender = senders[msg.sender];
        uint256 deposit = sender.deposit;
        uint256 reserve = reserves[msg.sender];
        require(deposit > 0 || reserve > 0, "sender deposit and reserve are zero");
        require(isUnlockInProgress(msg.sender), "no unlock request in progress");
        require(sender.withdrawRound <= roundsManager.currentRound(), "account is locked");
        sender.deposit = 0;
        sender.withdrawRound = 0;
        reserves[msg.sender] = 0;
        (bool ok, ) = payable(msg.sender).call{value: deposit + reserve}("");
        require(ok, "withdrawal transfer failed");
        emit Withdrawal(msg.sender, deposit, reserve);
    }

    // --- views ---

    function isUnlockInProgress(address _sender) public view returns (bool) {
        return senders[_sender].withdrawRound > 0;
    }

    function getSenderInfo(address _sender) public view returns (Sender memory sender, ReserveInfo memory reserve) {
        sender = senders[_sender];
        reserve = ReserveInfo(reserves[_sender], claimedInRound[_sender][roundsManager.currentRound()]);
    }

    function claimedReserve(address _reserveHolder, address _claimant) public view returns (uint256) {
        return claimedBy[_reserveHolder][roundsManager.currentRound()][_claimant];
    }
}
