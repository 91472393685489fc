// CPU linear layer y = x W^T + b on raw pointers: row invariant, and fast for the few rows of decoding.
//
// Row invariance. Every output y[m, n] is computed in one fixed order: an 8-lane accumulator takes
// W[n, k] * X[m, k] (a fused multiply-add) in lane k % 8 for k = 0, 1, ..., K - 1 (the last partial vector
// zero-padded), then the lanes are summed as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), then the
// bias is added. Which rows share a micro-kernel, how many rows there are and which thread runs them
// never changes that order, so a token's logits are bitwise the same alone or inside a verified block.
//
// Speed. Decoding is bound by streaming the weight from DRAM. Each group of 4 weight rows is read once
// for all M x rows: the first 3-row block streams it, the next blocks find it in cache. From two blocks
// on, the micro-kernels prefetch the next group, spread evenly over their k steps, so that DRAM keeps
// streaming while they compute. bfloat16 rows that several blocks read are widened (exactly) once.
// A single x row (a decoding step) reads each weight row alone instead, one sequential stream.
// Work items are groups; threads take contiguous ranges of them.
//
// Napkin math, 2-core Zen 1: DRAM ~20-28 GB/s; 16 fp32 flops per cycle and core, ~80 GFLOP/s on both
// cores measured at large M. M rows cost 2 M N K flops for 4 N K weight bytes, so the op turns compute bound at M ~ 5.
// [49152, 576] fp32 (113 MB): M = 1 >= ~4.5 ms (measured 5-5.6), M = 8 >= ~5.7 ms (~7), M = 16 >= ~11 ms
// (~12.5). So t(16) / t(1) stays above 2 wherever M = 1 streams at full bandwidth (benchmarks/linear.py).
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"
#include "simd.h"

namespace pyspec::cpu {

constexpr int kLinearRowsN = 4;  // weight rows per micro-kernel (output features)
constexpr int kLinearRowsM = 3;  // x rows per micro-kernel: 4 x 3 accumulators + 3 x + 1 w = 16 registers
constexpr int64_t kCacheLine = 64;
// A lone x-row block streams the weight; for rows up to this size it also prefetches the next group
// (the hardware prefetcher ramps up too slowly on short rows; on long rows it does better alone).
constexpr int64_t kPrefetchShortRowBytes = 4096;

template <typename T>
struct LinearParams {
  const float* x;   // [M, K] input rows (bfloat16 inputs are widened to float by the caller, exactly)
  const T* weight;  // [N, K] nn.Linear layout
  const T* bias;    // [N] or null
  T* y;             // [M, N]
  int64_t M, N, K;
};

// Software prefetch of the weight rows that come next, spread evenly over the k steps of the
// micro-kernels: `rate` cache lines per step in 16.16 fixed point, from `at` up to `end`.
struct Prefetch {
  const char* at;
  const char* end;
  uint32_t rate = 0, credit = 0;

  void issue() {
    credit += rate;
    for (; credit >= (1u << 16) && at < end; credit -= 1u << 16, at += kCacheLine) __builtin_prefetch(at);
  }
  // The same into L2 only (prefetcht1): the fp32 blocks' next group is 144+ lines, more than L1's
  // miss buffers hold; into L1 they stall the loads of the group computing now (SmolLM2 fp32, Zen 4:
  // passes of 3-8 tokens 15-25% faster this way; 1 token, which prefetches little, the same).
  void issue_to_l2() {
    credit += rate;
    for (; credit >= (1u << 16) && at < end; credit -= 1u << 16, at += kCacheLine) __builtin_prefetch(at, 0, 2);
  }
};

// acc[n][r] += W[n][k] * X[r][k] for k in [0, K) in order, lane k % kLanes; the last partial vector is
// zero-padded. RN weight rows at stride ws, RM x rows at stride xs. The register loops are unrolled
// explicitly: GCC then keeps the accumulators in registers (without it, it sometimes keeps them on the
// stack). Calls over consecutive k ranges (multiples of kLanes) continue the same sums.
template <int RN, int RM, typename W>
inline void dot_block(const W* w, int64_t ws, const float* x, int64_t xs, int64_t K, vfloat (&acc)[RN][RM],
                      Prefetch& pf) {
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    pf.issue_to_l2();
    vfloat xv[RM];
#pragma GCC unroll 8
    for (int r = 0; r < RM; ++r) xv[r] = load(x + r * xs + k);
#pragma GCC unroll 8
    for (int n = 0; n < RN; ++n) {
      const vfloat wv = load(w + n * ws + k);
#pragma GCC unroll 8
      for (int r = 0; r < RM; ++r) acc[n][r] = fmadd(wv, xv[r], acc[n][r]);
    }
  }
  if (k < K) {
    vfloat xv[RM];
#pragma GCC unroll 8
    for (int r = 0; r < RM; ++r) xv[r] = load_partial(x + r * xs + k, K - k);
#pragma GCC unroll 8
    for (int n = 0; n < RN; ++n) {
      const vfloat wv = load_partial(w + n * ws + k, K - k);
#pragma GCC unroll 8
      for (int r = 0; r < RM; ++r) acc[n][r] = fmadd(wv, xv[r], acc[n][r]);
    }
  }
}

// The fixed end of every output: lanes summed (reduce_lanes), then the bias added; y[m0 + r, n0 + n].
template <int RN, int RM, typename T>
inline void store_block(vfloat (&acc)[RN][RM], const T* bias, T* y, int64_t N, int64_t n0, int64_t m0) {
  for (int r = 0; r < RM; ++r) {
    float s[RN];
    if constexpr (RN == 4) {
      reduce_lanes4(acc[0][r], acc[1][r], acc[2][r], acc[3][r], s);
    } else {
      for (int n = 0; n < RN; ++n) s[n] = reduce_lanes(acc[n][r]);
    }
    for (int n = 0; n < RN; ++n) {
      if (bias != nullptr) s[n] += to_float(bias[n0 + n]);
      y[(m0 + r) * N + n0 + n] = from_float<T>(s[n]);
    }
  }
}

// y[m0 + r, n0 + n] for RN weight rows (w: rows n0 .. n0 + RN - 1) x RM x rows.
template <int RN, int RM, typename W, typename T>
inline void linear_block(const LinearParams<T>& p, const W* w, int64_t n0, int64_t m0, Prefetch& pf) {
  vfloat acc[RN][RM] = {};
  dot_block<RN, RM>(w, p.K, p.x + m0 * p.K, p.K, p.K, acc, pf);
  store_block<RN, RM>(acc, p.bias, p.y, p.N, n0, m0);
}

// Widens n bfloat16 weights into floats (exactly).
inline void widen(const bf16* w, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(out + i, load(w + i));
  for (; i < n; ++i) out[i] = to_float(w[i]);
}

// All M outputs of the RN weight rows w (rows n0 .. n0 + RN - 1), in blocks of kLinearRowsM x rows.
template <int RN, typename W, typename T>
inline void linear_blocks(const LinearParams<T>& p, const W* w, int64_t n0, Prefetch& pf) {
  constexpr int RM = kLinearRowsM;
  int64_t m = 0;
  for (; m + RM <= p.M; m += RM) linear_block<RN, RM>(p, w, n0, m, pf);
  if (p.M - m == 2) linear_block<RN, 2>(p, w, n0, m, pf);
  if (p.M - m == 1) linear_block<RN, 1>(p, w, n0, m, pf);
}

// All M outputs of weight rows [n0, n0 + RN), prefetching the `next_rows` weight rows after them.
template <int RN, typename T>
void linear_rows(const LinearParams<T>& p, int64_t n0, int64_t next_rows, float* scratch) {
  const int64_t blocks = (p.M + kLinearRowsM - 1) / kLinearRowsM;
  const int64_t row_bytes = p.K * int64_t(sizeof(T));
  // Spread the next rows' lines over this group's k steps: they stream from DRAM while the blocks
  // compute. A lone block is memory bound and prefetches only short rows (see kPrefetchShortRowBytes).
  const char* next = reinterpret_cast<const char*>(p.weight + (n0 + RN) * p.K);
  Prefetch pf{next, next + next_rows * row_bytes};
  if (blocks >= 2 || row_bytes <= kPrefetchShortRowBytes) {
    const int64_t lines = (next_rows * row_bytes + kCacheLine - 1) / kCacheLine;
    const int64_t steps = blocks * std::max<int64_t>(1, p.K / kLanes);
    pf.rate = uint32_t(std::min<int64_t>(((lines << 16) + steps - 1) / steps, int64_t(64) << 16));
  }
  const T* w = p.weight + n0 * p.K;
  if constexpr (std::is_same_v<T, bf16>) {
    if (blocks >= 2) {  // widen once rather than in every block
      widen(w, RN * p.K, scratch);
      linear_blocks<RN>(p, scratch, n0, pf);
      return;
    }
  }
  linear_blocks<RN>(p, w, n0, pf);
}

// Work items of linear(): groups of kLinearRowsN weight rows (the last one may be shorter).
inline int64_t linear_num_groups(int64_t N) { return (N + kLinearRowsN - 1) / kLinearRowsN; }

// Computes all outputs of weight-row groups [begin, end) (group g: rows 4g .. 4g + 3) for all M rows.
template <typename T>
void linear(const LinearParams<T>& p, int64_t begin, int64_t end) {
  std::vector<float> scratch(std::is_same_v<T, float> ? 0 : kLinearRowsN * p.K);
  for (int64_t g = begin; g < end; ++g) {
    const int64_t n0 = g * kLinearRowsN;
    if (p.M == 1) {
      // One x row: each weight row streams alone, front to back (a single sequential stream per
      // thread reaches ~0.9 of a plain read here, four interleaved row streams ~0.8); same bits.
      for (int64_t n = n0; n < std::min<int64_t>(n0 + kLinearRowsN, p.N); ++n) linear_rows<1>(p, n, 0, scratch.data());
    } else if (n0 + kLinearRowsN <= p.N) {
      const int64_t next_rows = std::clamp<int64_t>(p.N - n0 - kLinearRowsN, 0, kLinearRowsN);
      linear_rows<kLinearRowsN>(p, n0, next_rows, scratch.data());
    } else {
      for (int64_t n = n0; n < p.N; ++n) linear_rows<1>(p, n, 0, scratch.data());
    }
  }
}

}  // namespace pyspec::cpu
