"""Weights kept in their GGUF blocks: a packed linear weight and the reader that loads a file packed.

A :class:`PackedWeight` holds a ``[N, K]`` weight as ggml blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
Q5_K, Q6_K), a few bits a value. :func:`pyspec.packed_ops.linear_packed` multiplies over it exactly: bitwise
the fp32 linear over ``gguf.quants.dequantize``'s tensor, so a packed model gives the same tokens
and logits as the dequantised one, in a sixth to an eighth of the memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyspec import packed_ops
from pyspec.models.config import ModelConfig

# ggml type codes (gguf.GGMLQuantizationType) that pyspec's kernels decode.
PACKED_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
# Those the q8 kernels take (int8 activations, :func:`pyspec.packed_ops.linear_q8`).
Q8_TYPES = {"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"}
COMPUTE = ("exact", "q8")
_TYPE_NAMES = {code: name for name, code in PACKED_TYPES.items()}


class PackedWeight:
    """A linear weight ``[N, K]`` in GGUF blocks: parts of consecutive rows, each of one ggml type.

    Behaves where the decoder needs it like the fp32 weight it stands for (``shape``, ``dtype``,
    ``device``, row selection); :meth:`dequantize` gives that weight. Several parts let a fused
    projection keep rows stored in different formats (Q4_K_M files store some v rows in Q6_K).
    ``compute``: ``"exact"`` (bitwise the fp32 linear over :meth:`dequantize`) or ``"q8"``
    (:func:`pyspec.packed_ops.linear_q8`: int8 activations, faster, not fp32; a weight with a part in a
    format the q8 kernels lack stays exact, see :attr:`q8`).

    Example:
        >>> import gguf
        >>> w = torch.randn(6, 64)
        >>> q8 = int(gguf.GGMLQuantizationType.Q8_0)
        >>> packed = PackedWeight([torch.from_numpy(gguf.quants.quantize(w.numpy(), q8))], [q8], 64)
        >>> packed.shape, packed.formats
        ((6, 64), ['Q8_0'])
        >>> from pyspec import ops
        >>> x = torch.randn(2, 64)
        >>> y = packed_ops.linear_packed(x, packed.parts, packed.qtypes)
        >>> torch.equal(y, ops.linear(x, packed.dequantize()))
        True
    """

    dtype = torch.float32  # what it computes in
    device = torch.device("cpu")

    def __init__(self, parts: list[torch.Tensor], qtypes: list[int], k: int, compute: str = "exact") -> None:
        if len(parts) != len(qtypes) or not parts:
            raise ValueError(f"need one ggml type per part, got {len(parts)} parts and {len(qtypes)} types")
        unknown = [q for q in qtypes if int(q) not in _TYPE_NAMES]
        if unknown:
            raise ValueError(
                f"ggml types {unknown} are not packed formats pyspec decodes ({', '.join(PACKED_TYPES)})"
            )
        self.parts = [p.contiguous() for p in parts]  # uint8 [rows_i, row_bytes_i]
        self.qtypes = [int(q) for q in qtypes]
        self.k = int(k)
        self.shape = (sum(p.shape[0] for p in self.parts), self.k)
        if compute not in COMPUTE:
            raise ValueError(f"compute must be one of {COMPUTE}, got {compute!r}")
        self.compute = compute
        self.q8 = compute == "q8" and all(f in Q8_TYPES for f in self.formats) and self.k % 32 == 0

    @property
    def formats(self) -> list[str]:
        """The parts' ggml type names."""
        return [_TYPE_NAMES[q] for q in self.qtypes]

    @property
    def nbytes(self) -> int:
        return sum(p.numel() for p in self.parts)

    def dequantize(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The fp32 rows ``ids`` (default: all) ``[n, K]``, exactly as ``gguf.quants.dequantize``."""
        if len(self.parts) == 1:
            ids = torch.arange(self.shape[0]) if ids is None else ids.long().reshape(-1)
            return packed_ops.dequantize_rows(self.parts[0], self.qtypes[0], self.k, ids)
        full = torch.cat(
            [
                packed_ops.dequantize_rows(p, q, self.k, torch.arange(p.shape[0]))
                for p, q in zip(self.parts, self.qtypes, strict=True)
            ]
        )
        return full if ids is None else full[ids.long().reshape(-1)]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedding lookup: rows ``tokens`` ``[T]`` widened, ``[T, K]``."""
        return self.dequantize(tokens)

    def __getitem__(self, ids: torch.Tensor) -> PackedWeight:
        """The rows ``ids`` as a packed weight (a draft's shortlisted head), one part per format."""
        ids = torch.as_tensor(ids).long().reshape(-1)
        if (ids < 0).any() or (ids >= self.shape[0]).any():
            raise IndexError(f"row ids must be in [0, {self.shape[0]})")
        starts = np.cumsum([0] + [p.shape[0] for p in self.parts])
        part = np.searchsorted(starts, ids.numpy(), side="right") - 1
        if (np.diff(part) < 0).any():
            raise ValueError("row ids of a multi-format packed weight must keep the parts' order")
        rows = [self.parts[i][ids[part == i] - int(starts[i])] for i in range(len(self.parts))]
        kept = [i for i, r in enumerate(rows) if r.shape[0]]
        return PackedWeight([rows[i] for i in kept], [self.qtypes[i] for i in kept], self.k, self.compute)

    def contiguous(self) -> PackedWeight:
        return self

    def split(self, sizes: list[int]) -> list[torch.Tensor]:
        """The weight dequantised and split along the rows (as ``Tensor.split``)."""
        return list(self.dequantize().split(sizes))

    @staticmethod
    def cat(weights: list[PackedWeight]) -> PackedWeight:
        """Rows of several packed weights one after the other (a fused projection); neighbouring parts of
        one format are joined."""
        if len({w.k for w in weights}) != 1:
            raise ValueError(f"cannot fuse packed weights of different K: {[w.k for w in weights]}")
        parts, qtypes = [], []
        for w in weights:
            for p, q in zip(w.parts, w.qtypes, strict=True):
                if qtypes and qtypes[-1] == q:
                    parts[-1] = torch.cat([parts[-1], p])
                else:
                    parts.append(p)
                    qtypes.append(q)
        return PackedWeight(parts, qtypes, weights[0].k, weights[0].compute)

    def __repr__(self) -> str:
        mode = "q8" if self.q8 else "exact"
        return f"PackedWeight(shape={self.shape}, formats={self.formats}, {mode}, {self.nbytes / 1e6:.1f} MB)"


class PackedLinear(torch.nn.Module):
    """A projection whose weight is a :class:`PackedWeight` (bias, if any, fp32)."""

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return (packed_ops.linear_q8 if w.q8 else packed_ops.linear_packed)(x, w.parts, w.qtypes, self.bias)


def read_packed_gguf(path: Path, progress: bool = True, compute: str = "exact") -> tuple[ModelConfig, dict]:
    """Reads a GGUF file keeping its 2-D tensors in packed formats pyspec decodes as
    :class:`PackedWeight` (with ``compute``) under their Hugging Face names; other tensors (norms,
    biases, F16/F32 or formats pyspec does not decode) dequantised to fp32 tensors. Returns
    ``(config, state)``."""
    import gguf
    from tqdm import tqdm

    from pyspec.models.gguf_convert import _field, hf_name, read_config, unpermute_rotary

    reader = gguf.GGUFReader(str(path))
    config = read_config(reader, list(_field(reader, "tokenizer.ggml.tokens", [])))
    state: dict = {}
    for t in tqdm(reader.tensors, desc=f"reading {path.name}", unit="tensor", disable=not progress):
        dims = [int(d) for d in reversed(t.shape.tolist())]  # GGUF lists dims innermost first
        permute = config.architecture == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k")
        heads = config.num_heads if ".attn_q." in t.name else config.num_kv_heads
        code = int(t.tensor_type)
        if len(dims) == 2 and code in _TYPE_NAMES:
            blocks = np.asarray(t.data, dtype=np.uint8).reshape(dims[0], -1)  # [rows, row_bytes]
            if permute:
                blocks = unpermute_rotary(blocks, heads)
            data = torch.from_numpy(np.array(blocks, order="C"))
            state[hf_name(t.name)] = PackedWeight([data], [code], dims[1], compute)
        else:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(dims)
            if permute:
                w = unpermute_rotary(w, heads)
            state[hf_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
    return config, state
