// CPU linear layer over GGUF-packed weight rows, exact: y = x W^T + b with W kept in its ggml blocks.
//
// Exactness. Each weight value is widened by quants.h to the float gguf-py's dequantize() gives, and
// every output runs linear.h's fixed order (8 lanes over k, the fixed lane sum, then the bias) on those
// floats. So y is bitwise the fp32 linear over the dequantised tensor, for any M and thread count:
// packing is a pure speed and memory choice.
//
// Speed. The weights stream at 4.5-6.6 bits a value instead of 32, so the op turns from memory bound
// to compute bound (widening costs more than the multiply-adds). Up to 3 x rows (decoding, a short
// verified block): a group of 4 weight rows is widened 8 values at a time in registers and multiplied
// into every x row at once (4 x M independent chains). More rows: the group's 4 rows are widened whole,
// once, into scratch, and linear.h's blocks read them for all M rows.
#pragma once

#include <algorithm>
#include <new>
#include <vector>

#include "linear.h"
#include "quants.h"

namespace pyspec::cpu {

// While a group of rows computes, the next kPackedPrefetchGroups groups' bytes are prefetched, spread
// over its steps: the hardware prefetcher alone leaves four interleaved row streams stalling on DRAM
// (Qwen's decoding pass: 174 -> 146 ms on 2-core Zen 4).
constexpr int64_t kPackedPrefetchGroups = 1;

// One run of weight rows in one format; a linear's rows may be several parts (a fused q/k/v
// projection whose v rows are stored in another format).
struct PackedPart {
  const uint8_t* data;  // [rows, row_bytes]
  int qtype;            // ggml type code (QType)
  int64_t rows;
  int64_t row_bytes;    // K / block_values * block_bytes
  int64_t first_row;    // its first output feature
};

struct PackedLinearParams {
  const float* x;     // [M, K]
  const float* bias;  // [N] or null
  float* y;           // [M, N]
  int64_t M, N, K;
};

// x rows m0 .. m0 + RM - 1 against RN rows of one part (rows r0 ..): each sub-block of the RN rows is
// widened 8 values at a time in registers, once, and multiplied into all RM x rows at once (RN x RM
// independent chains). Each output keeps linear.h's order: lane k % 8 takes w[k] * x[k] in k order.
template <QType QT, int RN, int RM>
void packed_block(const PackedLinearParams& p, const PackedPart& part, int64_t r0, int64_t m0, Prefetch& pf) {
  const QFormat f = qformat(static_cast<int>(QT));
  constexpr int subs = (QT == QType::Q4_K || QT == QType::Q5_K || QT == QType::Q6_K) ? 8 : 1;
  vfloat acc[RN][RM] = {};
  const uint8_t* rows = part.data + r0 * part.row_bytes;
  const float* x = p.x + m0 * p.K;
  for (int64_t b = 0; b < p.K / f.block_values; ++b) {
    for (int j = 0; j < subs; ++j) {
      alignas(64) unsigned char storage[RN][sizeof(SubBlock<QT>)];
#pragma GCC unroll 8
      for (int n = 0; n < RN; ++n) new (storage[n]) SubBlock<QT>(rows + n * part.row_bytes + b * f.block_bytes, j);
      pf.issue();
      const SubBlock<QT>* s = reinterpret_cast<const SubBlock<QT>*>(storage);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        vfloat xv[RM];
#pragma GCC unroll 8
        for (int r = 0; r < RM; ++r) xv[r] = load(x + r * p.K + i * kLanes);
#pragma GCC unroll 8
        for (int n = 0; n < RN; ++n) {
          const vfloat w = s[n].get(i);
#pragma GCC unroll 8
          for (int r = 0; r < RM; ++r) acc[n][r] = fmadd(w, xv[r], acc[n][r]);
        }
      }
      x += 32;
    }
  }
  store_block<RN, RM>(acc, p.bias, p.y, p.N, part.first_row + r0, m0);
}

// Up to this many x rows multiply in registers (one packed_block: the weights widened once, no scratch,
// the next rows prefetched); more are widened whole into scratch once and read by linear.h's blocks:
// widening again for every block of x rows would cost more than the scratch's stores and reloads.
// 2-core Zen 4, SmolLM2-135M Q4_1 pass at 256 tokens of context: 2 rows 15.3 -> 12.1 ms (1 row: 9.5),
// 3 rows 15.3 -> 14.7 ms; blocks of 2-4 rows over 4-16 x rows measured slower than scratch.
constexpr int64_t kPackedRegisterRows = 3;

// All M outputs of RN rows of one part (rows r0 ..), the rows widened whole into `scratch` once.
// Flattened: beside the register blocks GCC stopped inlining linear.h's blocks here, and the out-of-line
// blocks (their Prefetch in memory) ran 16% more instructions (callgrind).
template <QType QT, int RN>
__attribute__((flatten)) void packed_rows_widened(const PackedLinearParams& p, const PackedPart& part, int64_t r0, float* scratch) {
  const QFormat f = qformat(static_cast<int>(QT));
  for (int n = 0; n < RN; ++n)
    dequant_blocks<QT>(part.data + (r0 + n) * part.row_bytes, p.K / f.block_values, scratch + n * p.K);
  const LinearParams<float> lp{p.x, nullptr, p.bias, p.y, p.M, p.N, p.K};
  Prefetch none{nullptr, nullptr};
  linear_blocks<RN>(lp, scratch, part.first_row + r0, none);
}

// All M outputs of RN rows of one part (rows r0 ..).
template <QType QT, int RN>
void packed_rows(const PackedLinearParams& p, const PackedPart& part, int64_t r0, float* scratch, Prefetch& pf) {
  static_assert(kPackedRegisterRows == 3, "packed_rows dispatches 1 to 3 rows to packed_block");
  if (p.M == 1) return packed_block<QT, RN, 1>(p, part, r0, 0, pf);
  if (p.M == 2) return packed_block<QT, RN, 2>(p, part, r0, 0, pf);
  if (p.M == 3) return packed_block<QT, RN, 3>(p, part, r0, 0, pf);
  packed_rows_widened<QT, RN>(p, part, r0, scratch);
}

// A work item: up to kLinearRowsN rows of one part.
struct PackedGroup {
  int32_t part;
  int32_t rows;
  int64_t first;  // row within the part
};

// The work items of a linear over `parts`, in output order.
inline std::vector<PackedGroup> packed_groups(const std::vector<PackedPart>& parts) {
  std::vector<PackedGroup> groups;
  for (size_t i = 0; i < parts.size(); ++i)
    for (int64_t r = 0; r < parts[i].rows; r += kLinearRowsN)
      groups.push_back({int32_t(i), int32_t(std::min<int64_t>(kLinearRowsN, parts[i].rows - r)), r});
  return groups;
}

// Computes work items [begin, end) for all M rows.
inline void linear_packed(const PackedLinearParams& p, const std::vector<PackedPart>& parts,
                          const std::vector<PackedGroup>& groups, int64_t begin, int64_t end) {
  std::vector<float> scratch(p.M > kPackedRegisterRows ? kLinearRowsN * p.K : 0);
  for (int64_t g = begin; g < end; ++g) {
    const PackedGroup& group = groups[g];
    const PackedPart& part = parts[group.part];
    // The next groups' rows: contiguous after this group's within a part (a part's end may prefetch
    // a little past it: harmless).
    const char* next = reinterpret_cast<const char*>(part.data + (group.first + group.rows) * part.row_bytes);
    const int64_t ahead = kPackedPrefetchGroups * kLinearRowsN * part.row_bytes;
    Prefetch pf{next, next + ahead};
    const int64_t steps = std::max<int64_t>(1, group.rows * p.K / 32 / (group.rows == kLinearRowsN ? kLinearRowsN : 1));
    pf.rate = uint32_t(std::min<int64_t>((((ahead + kCacheLine - 1) / kCacheLine) << 16) / steps + 1, int64_t(64) << 16));
    dispatch_qtype(part.qtype, [&](auto qt) {
      constexpr QType QT = decltype(qt)::value;
      if (group.rows == kLinearRowsN) {
        packed_rows<QT, kLinearRowsN>(p, part, group.first, scratch.data(), pf);
      } else {
        for (int64_t r = 0; r < group.rows; ++r)
          packed_rows<QT, 1>(p, part, group.first + r, scratch.data(), pf);
      }
    });
  }
}

// Rows ids[i] of a packed [rows, K] tensor, widened: out[i * K ..] (an embedding lookup).
inline void dequant_rows(const uint8_t* data, int qtype, int64_t K, const int64_t* ids, int64_t n, float* out) {
  const QFormat f = qformat(qtype);
  const int64_t row_bytes = K / f.block_values * f.block_bytes;
  dispatch_qtype(qtype, [&](auto qt) {
    for (int64_t i = 0; i < n; ++i) dequant_blocks<decltype(qt)::value>(data + ids[i] * row_bytes, K / f.block_values, out + i * K);
  });
}

}  // namespace pyspec::cpu
