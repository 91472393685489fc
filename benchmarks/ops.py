"""CPU tree attention: pyspec's op against the reference path, with a correctness check.

The reference path is what a runtime without the op does: gather each sequence's KV from its pages
into a dense tensor, build a dense boolean mask, call PyTorch's ``scaled_dot_product_attention``.
Shapes are SmolLM2-135M's attention (9 query heads, 3 KV heads, head dim 64), fp32, page size 16,
a shuffled page table, one sequence with a random tree of the given size over the given context.

    python benchmarks/ops.py            # tree sizes 8, 32, 64 x contexts 256, 1024, 4096
    python benchmarks/ops.py --quick    # fewer repeats
    python benchmarks/ops.py --markdown # also a markdown table (the README's results)

Last line: JSON ``{"min_speedup", "speedup_ctx_ge_1024_min", "max_abs_err", ...}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch
import torch.nn.functional as F

from pyspec import ops
from pyspec.reference import gather_kv
from pyspec.tree import ancestor_mask

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE_SIZE = 9, 3, 64, 16


def random_tree(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random parent array of n nodes (each node's parent drawn among the earlier ones)."""
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    return torch.tensor(parents)


def make_case(tree: int, context: int, gen: torch.Generator) -> dict:
    total = context + tree
    pages = -(-total // PAGE_SIZE)
    k_cache = torch.randn(pages + 4, PAGE_SIZE, KV_HEADS, HEAD_DIM, generator=gen)
    v_cache = torch.randn(pages + 4, PAGE_SIZE, KV_HEADS, HEAD_DIM, generator=gen)
    table = torch.randperm(pages + 4, generator=gen)[:pages].int()[None]
    mask = ancestor_mask(random_tree(tree, gen))
    return dict(
        q=torch.randn(tree, Q_HEADS, HEAD_DIM, generator=gen),
        k_cache=k_cache,
        v_cache=v_cache,
        qo_indptr=torch.tensor([0, tree], dtype=torch.int32),
        page_table=table,
        kv_lens=torch.tensor([context], dtype=torch.int32),
        tree_mask=mask.reshape(-1),
        dense_mask=mask,
    )


def run_op(c: dict) -> torch.Tensor:
    return ops.tree_attention(
        c["q"], c["k_cache"], c["v_cache"], c["qo_indptr"], c["page_table"], c["kv_lens"], c["tree_mask"]
    )


def run_reference(c: dict) -> torch.Tensor:
    context, tree = int(c["kv_lens"][0]), c["q"].shape[0]
    k = gather_kv(c["k_cache"], c["page_table"][0], context + tree)  # [S, kv_heads, d]
    v = gather_kv(c["v_cache"], c["page_table"][0], context + tree)
    mask = torch.cat([torch.ones(tree, context, dtype=torch.bool), c["dense_mask"]], dim=1)  # [n, S]
    out = F.scaled_dot_product_attention(
        c["q"].transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        enable_gqa=True,
    )
    return out[0].transpose(0, 1)


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median and interquartile spread of fn's wall time in ms, after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=4)
    return statistics.median(times), q[2] - q[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (well under a minute)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--markdown", action="store_true", help="also print the table in markdown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (7 if args.quick else 31)
    gen = torch.Generator().manual_seed(0)

    print(
        f"tree attention, fp32, {args.threads} threads, {Q_HEADS}/{KV_HEADS} heads, head dim {HEAD_DIM}, "
        f"page size {PAGE_SIZE}, median of {repeats} ({platform.processor() or platform.machine()})"
    )
    header = ("tree", "context", "op ms", "iqr", "ref ms", "iqr", "speedup", "max err")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (5, 8, 9, 6, 9, 6, 8, 8), strict=True)))
    rows = []
    for tree in (8, 32, 64):
        for context in (256, 1024, 4096):
            case = make_case(tree, context, gen)
            out, expected = run_op(case), run_reference(case)
            err = (out - expected).abs().max().item()
            op_ms, op_iqr = median_time(lambda c=case: run_op(c), repeats)
            ref_ms, ref_iqr = median_time(lambda c=case: run_reference(c), repeats)
            row = dict(
                tree=tree,
                context=context,
                op_ms=op_ms,
                op_iqr=op_iqr,
                ref_ms=ref_ms,
                ref_iqr=ref_iqr,
                speedup=ref_ms / op_ms,
                max_abs_err=err,
            )
            rows.append(row)
            print(
                f"{tree:>5} {context:>8} {op_ms:>9.3f} {op_iqr:>6.3f} {ref_ms:>9.3f} {ref_iqr:>6.3f} "
                f"{ref_ms / op_ms:>7.2f}x {err:>8.1e}"
            )
    if args.markdown:
        print("\n| tree | context | pyspec op ms (IQR) | reference ms (IQR) | speed-up | max abs err |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['tree']} | {r['context']} | {r['op_ms']:.3f} ({r['op_iqr']:.3f}) | "
                f"{r['ref_ms']:.3f} ({r['ref_iqr']:.3f}) | {r['speedup']:.2f}x | {r['max_abs_err']:.1e} |"
            )
    summary = dict(
        min_speedup=round(min(r["speedup"] for r in rows), 3),
        speedup_ctx_ge_1024_min=round(min(r["speedup"] for r in rows if r["context"] >= 1024), 3),
        max_abs_err=max(r["max_abs_err"] for r in rows),
        correct=all(r["max_abs_err"] < 1e-4 for r in rows),
        threads=args.threads,
        repeats=repeats,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
