"""Trickle (WIRE.md §7): go-livepeer's HTTP channels of sequential segments streamed as written."""
