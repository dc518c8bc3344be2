"""Livepeer probabilistic micropayments: the sender (gateway), the recipient (orchestrator), the chain."""
