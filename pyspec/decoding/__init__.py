"""Decoding loops: autoregressive, speculative (chains, trees, hierarchies of drafts), the
continuous-batching engine (EMS-SD) and APAR."""
