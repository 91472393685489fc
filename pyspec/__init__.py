"""pyspec: fast, lossless LLM decoding.

The compiled ops (tree attention, ragged paged-KV append, compaction, page copies, rotary embedding)
live in :mod:`pyspec.ops`; their plain-PyTorch specification is :mod:`pyspec.reference`.
"""

from pyspec import ops, packed_ops, reference
from pyspec.api import generate, load_model, plan, profile_model
from pyspec.decoding.apar import generate_apar
from pyspec.kv_cache import OutOfPagesError, PagedKVCache
from pyspec.models.adapters import load_apar_model
from pyspec.sampling import SamplingParams
from pyspec.tree import ancestor_mask, pack_tree_masks

__all__ = [
    "ops",
    "packed_ops",
    "reference",
    "load_model",
    "load_apar_model",
    "generate",
    "generate_apar",
    "plan",
    "profile_model",
    "SamplingParams",
    "PagedKVCache",
    "OutOfPagesError",
    "ancestor_mask",
    "pack_tree_masks",
]
__version__ = "0.1.0"
