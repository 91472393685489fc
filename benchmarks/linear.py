"""CPU linear layer: pyspec's row-invariant op against torch's F.linear, for the few rows of decoding.

Speculative decoding verifies k tokens in one forward pass, which pays only if k rows cost little more
than one. Shapes are SmolLM2-135M's (hidden 576, MLP 1536, vocabulary 49152) and Qwen2.5-1.5B's
(hidden 1536, MLP 8960, vocabulary 151936), fp32, 2 threads; M = 1 is decoding, M = 256 prefill.
Each (shape, M) runs both ops alternately; median and interquartile range of their wall times.

    python benchmarks/linear.py            # all shapes, M = 1, 2, 4, 8, 16, 64, 256
    python benchmarks/linear.py --quick    # fewer repeats

Checks while timing: every output against F.linear (max abs error < 1e-4), and row invariance: rows
computed inside each M-row block equal, bitwise, the same rows computed alone (M = 1).
Last line: JSON ``{"t8_over_t1_max", "t16_over_t1_max", "m1_speedup_min", "row_invariant", ...}``.
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

SHAPES = [(1536, 576), (576, 1536), (49152, 576), (8960, 1536), (1536, 8960), (151936, 1536)]  # (N, K)
ROWS = [1, 2, 4, 8, 16, 64, 256]
MAX_ABS_ERR = 1e-4


def time_pair(fns, budget_s: float, min_repeats: int, max_repeats: int) -> list[tuple[float, float]]:
    """Median and interquartile range (ms) of each fn, called alternately after one warm-up call each."""
    start = time.perf_counter()
    for fn in fns:
        fn()
    estimate = (time.perf_counter() - start) / len(fns)
    repeats = int(min(max_repeats, max(min_repeats, budget_s / max(estimate, 1e-9))))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    result = []
    for ts in times:
        q = statistics.quantiles(ts, n=4)
        result.append((statistics.median(ts), q[2] - q[0]))
    return result


def check_rows(x: torch.Tensor, w: torch.Tensor, outputs: dict[int, torch.Tensor]) -> bool:
    """Rows 0..3 and the last row of every M-row output equal those rows computed alone."""
    rows = sorted({i for m in outputs for i in (0, 1, 2, 3, m - 1) if i < m})
    alone = {i: ops.linear(x[i : i + 1], w) for i in rows}
    return all(torch.equal(y[i : i + 1], alone[i]) for m, y in outputs.items() for i in rows if i < m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget, min_rep, max_rep = (0.3, 3, 15) if args.quick else (1.5, 7, 51)
    gen = torch.Generator().manual_seed(0)

    print(
        f"linear y = x W^T, fp32, {args.threads} threads, median (IQR) over alternating repeats "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__})"
    )
    header = ("N", "K", "M", "pyspec ms", "iqr", "F.linear ms", "iqr", "speedup", "t/t(1)", "GFLOP/s")
    widths = (6, 5, 4, 10, 7, 12, 7, 8, 7, 8)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    summary_rows = []
    row_invariant, max_err = True, 0.0
    for n, k in SHAPES:
        w = torch.randn(n, k, generator=gen) / k**0.5
        x = torch.randn(max(ROWS), k, generator=gen)
        outputs, t1 = {}, None
        for m in ROWS:
            xm = x[:m]
            y = ops.linear(xm, w)
            max_err = max(max_err, (y - F.linear(xm, w)).abs().max().item())
            outputs[m] = y
            pair = [lambda xm=xm, w=w: ops.linear(xm, w), lambda xm=xm, w=w: F.linear(xm, w)]
            (op_ms, op_iqr), (ref_ms, ref_iqr) = time_pair(pair, budget, min_rep, max_rep)
            t1 = op_ms if m == 1 else t1
            gflops = 2 * m * n * k / (op_ms * 1e6)
            summary_rows.append(dict(n=n, k=k, m=m, op_ms=op_ms, ref_ms=ref_ms, ratio=op_ms / t1))
            print(
                f"{n:>6} {k:>5} {m:>4} {op_ms:>10.3f} {op_iqr:>7.3f} {ref_ms:>12.3f} {ref_iqr:>7.3f} "
                f"{ref_ms / op_ms:>7.2f}x {op_ms / t1:>7.2f} {gflops:>8.1f}",
                flush=True,
            )
        row_invariant &= check_rows(x, w, outputs)

    def worst(m: int) -> float:
        return round(max(r["ratio"] for r in summary_rows if r["m"] == m), 3)

    summary = dict(
        t8_over_t1_max=worst(8),
        t16_over_t1_max=worst(16),
        m1_speedup_min=round(min(r["ref_ms"] / r["op_ms"] for r in summary_rows if r["m"] == 1), 3),
        row_invariant=row_invariant,
        max_abs_err=max_err,
        correct=max_err < MAX_ABS_ERR,
        threads=args.threads,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
