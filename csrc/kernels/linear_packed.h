// CPU linear layer over GGUF-packed weight rows, exact: y = x W^T + b with W kept in its ggml blocks.
//
// Exactness. Each weight value is widened by quants.h to the float gguf-py's dequantize() gives, and
// every output runs linear.h's fixed order (8 lanes over k, the fixed lane sum, then the bias) on those
// floats. So y is bitwise the fp32 linear over the dequantised tensor, for any M and thread count:
// packing is a pure speed and memory choice.
//
// Speed. The weights stream at 4.5-6.6 bits a value instead of 32, so the op turns from memory bound
// to compute bound (widening costs more than the multiply-adds). One x row (decoding): a group of 4
// weight rows is widened 8 values at a time in registers and multiplied at once (4 independent
// chains). More rows: the group's 4 rows are widened whole, once, and linear.h's blocks read them for
// all M rows.
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

// One x row (a decoding step): RN rows of one part (rows r0 ..) widened 8 values at a time in registers
// and multiplied at once; the RN rows' sums are independent chains, interleaved.
template <QType QT, int RN>
void packed_rows_one(const PackedLinearParams& p, const PackedPart& part, int64_t r0, Prefetch& pf) {
  const QFormat f = qformat(static_cast<int>(QT));
  constexpr int subs = (QT == QType::Q4_K || QT == QType::Q5_K || QT == QType::Q6_K) ? 8 : 1;
  vfloat acc[RN] = {};
  const uint8_t* rows = part.data + r0 * part.row_bytes;
  const float* x = p.x;
  for (int64_t b = 0; b < p.K / f.block_values; ++b) {
    for (int j = 0; j < subs; ++j) {
      const SubBlock<QT>* s;
      alignas(64) unsigned char storage[RN][sizeof(SubBlock<QT>)];
#pragma GCC unroll 8
      for (int n = 0; n < RN; ++n) new (storage[n]) SubBlock<QT>(rows + n * part.row_bytes + b * f.block_bytes, j);
      pf.issue();
      s = reinterpret_cast<const SubBlock<QT>*>(storage);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const vfloat xv = load(x + i * kLanes);
#pragma GCC unroll 8
        for (int n = 0; n < RN; ++n) acc[n] = fmadd(s[n].get(i), xv, acc[n]);
      }
      x += 32;
    }
  }
  vfloat acc2[RN][1];
  for (int n = 0; n < RN; ++n) acc2[n][0] = acc[n];
  store_block<RN, 1>(acc2, p.bias, p.y, p.N, part.first_row + r0, 0);
}

// All M outputs of RN rows of one part (rows r0 ..): for several x rows, widened whole into `scratch`.
template <QType QT, int RN>
void packed_rows(const PackedLinearParams& p, const PackedPart& part, int64_t r0, float* scratch, Prefetch& pf) {
  if (p.M > 1) {
    const QFormat f = qformat(static_cast<int>(QT));
    for (int n = 0; n < RN; ++n)
      dequant_blocks<QT>(part.data + (r0 + n) * part.row_bytes, p.K / f.block_values, scratch + n * p.K);
    const LinearParams<float> lp{p.x, nullptr, p.bias, p.y, p.M, p.N, p.K};
    Prefetch none{nullptr, nullptr};
    linear_blocks<RN>(lp, scratch, part.first_row + r0, none);
    return;
  }
  packed_rows_one<QT, RN>(p, part, r0, pf);
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
  std::vector<float> scratch(p.M > 1 ? kLinearRowsN * p.K : 0);
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
