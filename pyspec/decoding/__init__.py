"""Decoding loops: autoregressive now; speculative, hierarchical, batched and APAR to come."""
