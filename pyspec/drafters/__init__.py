"""Drafters: whatever proposes tokens for a verifier (n-gram lookup, draft models, hierarchy levels)."""

from pyspec.drafters.base import Draft, Drafter
from pyspec.drafters.model import ModelDrafter, TreeShape
from pyspec.drafters.ngram import NgramDrafter

__all__ = ["Draft", "Drafter", "ModelDrafter", "NgramDrafter", "TreeShape"]
