// CPU linear over GGUF-packed rows with int8 activations ("q8" compute): llama.cpp-style numerics in a
// fixed order. Torch-free.
//
// Numerics. Each x row is quantised alone, d = max |x| / 127, q = round(x / d), per 32 values for the
// 32-value formats (ggml's Q8_0) and per 256 for the K-quants (ggml's Q8_K). A weight block is
// w = d * u + wo, u its quants (Q4_K: d sc_j u - dmin m_j; Q4_1: d u + m; Q4_0: d (u - 8); Q8_0: d u;
// Q6_K: d sc (u - 32)). Per block, the integer sums (of sc u q, of q) are exact, so the order in which
// SIMD lanes add them does not matter; the float steps are fixed: an 8-lane accumulator takes
// (d dx) * the 8 lane sums by fused multiply-add block by block, a second accumulator the minimums'
// term, and the result is reduce_lanes of the first minus/plus the second. No step depends on M,
// on the other rows or on the threads: a row's output is the same bits alone or in a verified block,
// which is what lossless speculation needs. It is not the fp32 result (x is rounded to 8 bits): a
// different target from the exact kernels, chosen explicitly, never by a plan.
//
// Speed: integer multiply-adds (vpmaddubsw + vpmaddwd, 32 products in two instructions) replace the
// widening of every weight to float; one float step per block.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "linear.h"
#include "quants.h"

namespace pyspec::cpu {

// Formats the q8 kernels take (others: the caller uses the exact kernels for that part).
inline bool q8_supported(int code) {
  switch (static_cast<QType>(code)) {
    case QType::Q4_0:
    case QType::Q4_1:
    case QType::Q8_0:
    case QType::Q4_K:
    case QType::Q6_K: return true;
    default: return false;
  }
}

// x rows quantised to int8 twice, as llama.cpp does for its two families of formats: per 32 values
// (q32, d32, sum32: for the 32-value block formats) and per 256 values (q256, d256, sum16 per 16
// values: for the K-quants). Row m occupies [m * K, (m + 1) * K) of q32 and q256.
struct Q8Rows {
  std::vector<int8_t> q32, q256;
  std::vector<float> d32, d256;
  std::vector<int32_t> sum32, sum16;
  int64_t K = 0;

  Q8Rows(int64_t M, int64_t K_)
      : q32(M * K_), q256(K_ % 256 == 0 ? M * K_ : 0), d32(M * K_ / 32), d256(M * K_ / 256),
        sum32(M * K_ / 32), sum16(M * K_ / 16), K(K_) {}
};

// q = round(x / d) (half to even), d = max |x| / 127, for the n values at x; returns d.
inline float quantize_block_q8(const float* x, int n, int8_t* q) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float id = amax > 0.f ? 127.f / amax : 0.f;
  for (int i = 0; i < n; ++i) q[i] = int8_t(std::clamp(int(std::nearbyint(x[i] * id)), -127, 127));
  return amax / 127.f;
}

// Quantises row x[K] (K a multiple of 32) into row m of `out`.
inline void quantize_row_q8(const float* x, int64_t m, Q8Rows& out) {
  const int64_t K = out.K;
  for (int64_t b = 0; b < K / 32; ++b) {
    int8_t* q = out.q32.data() + m * K + 32 * b;
    out.d32[m * (K / 32) + b] = quantize_block_q8(x + 32 * b, 32, q);
    int32_t s = 0;
    for (int i = 0; i < 32; ++i) s += q[i];
    out.sum32[m * (K / 32) + b] = s;
  }
  if (K % 256 != 0) return;
  for (int64_t b = 0; b < K / 256; ++b) {
    int8_t* q = out.q256.data() + m * K + 256 * b;
    out.d256[m * (K / 256) + b] = quantize_block_q8(x + 256 * b, 256, q);
    for (int g = 0; g < 16; ++g) {
      int32_t s = 0;
      for (int i = 0; i < 16; ++i) s += q[16 * g + i];
      out.sum16[m * (K / 16) + 16 * b + g] = s;
    }
  }
}

#if defined(__AVX2__)

inline __m256i load32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline vfloat to_vfloat(__m256i v) { return reinterpret_cast<vfloat>(_mm256_cvtepi32_ps(v)); }

// 8 int32 partial sums of 32 products u8 * s8 (lane j: values 4j .. 4j + 3): exact.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Dot products of one packed weight row with x rows [m0, m0 + n) of the quantised x, into out[n].
// Each weight block is decoded once for all n rows. Per row, two accumulators in a fixed order: 8
// float lanes for the scaled integer sums, one float for the minimums' term.
constexpr int kQ8Rows = 8;  // x rows per pass over a weight row

// NR: the most rows (1: a decoding step, specialised; kQ8Rows: any n <= kQ8Rows).
template <QType QT, int NR>
void dot_q8(const uint8_t* w, const Q8Rows& xq, int64_t m0, int rows, float* out) {
  const int64_t K = xq.K;
  const QFormat f = qformat(static_cast<int>(QT));
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const int n = NR == 1 ? 1 : rows;
  vfloat acc[NR] = {};
  float acc_min[NR] = {};
  if constexpr (QT == QType::Q4_K || QT == QType::Q6_K) {
    // x per 256 values; per block: I = sum_j sc_j sum(u q) exact, one float step per block
    for (int64_t blk = 0; blk < K / 256; ++blk) {
      const uint8_t* b = w + blk * f.block_bytes;
      __m256i u[8];       // the block's 8 sub-blocks of 32 unsigned quants
      __m256i scales[8];  // per sub-block, 16-bit scales for vpmaddwd
      alignas(16) uint8_t sm[16];
      float d, dmin = 0.f;
      if constexpr (QT == QType::Q4_K) {
        scales_mins_k4(b + 4, sm);
        for (int c = 0; c < 4; ++c) {
          const __m256i v = load32(b + 16 + 32 * c);
          u[2 * c] = _mm256_and_si256(v, low4);
          u[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        }
        for (int j = 0; j < 8; ++j) scales[j] = _mm256_set1_epi16(sm[j]);
        d = half_to_float(b);
        dmin = half_to_float(b + 2);
      } else {  // Q6_K: w = d sc (u - 32) per 16 values: I = sum sc sum(u q) - 32 sum sc sum(q)
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
        for (int t = 0; t < 8; ++t) {
          const SubBlock<QType::Q6_K> sub(b, t);
          u[t] = load32(sub.q);
          scales[t] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * t + 1]), _mm_set1_epi16(sc[2 * t]));
        }
        d = half_to_float(b + 208);
      }
      for (int r = 0; r < n; ++r) {
        const int64_t m = m0 + r;
        const int8_t* qx = xq.q256.data() + m * K + 256 * blk;
        const int32_t* bsum = xq.sum16.data() + m * (K / 16) + 16 * blk;
        const float dx = xq.d256[m * (K / 256) + blk];
        __m256i isum = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j)
          isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(u[j], load32(qx + 32 * j)), scales[j]));
        int32_t imin = 0;
        float scale_min;
        if constexpr (QT == QType::Q4_K) {
          for (int j = 0; j < 8; ++j) imin += int32_t(sm[8 + j]) * (bsum[2 * j] + bsum[2 * j + 1]);
          scale_min = dmin * dx;
        } else {
          const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
          for (int g = 0; g < 16; ++g) imin += 32 * int32_t(sc[g]) * bsum[g];
          scale_min = d * dx;
        }
        acc[r] = fmadd(splat(d * dx), to_vfloat(isum), acc[r]);
        acc_min[r] = std::fma(scale_min, float(imin), acc_min[r]);
      }
    }
    for (int r = 0; r < n; ++r) out[r] = reduce_lanes(acc[r]) - acc_min[r];
  } else {
    // x per 32 values; per block: (d dx) sum(u q) + (wo dx) sum(q)
    for (int64_t blk = 0; blk < K / 32; ++blk) {
      const uint8_t* b = w + blk * f.block_bytes;
      const float d = half_to_float(b);
      __m256i u, sign = _mm256_setzero_si256();
      float wo = 0.f;
      if constexpr (QT == QType::Q8_0) {
        sign = load32(b + 2);
        u = _mm256_sign_epi8(sign, sign);  // |q|; x takes q's sign
      } else {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (QT == QType::Q4_1 ? 4 : 2)));
        u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low4);
        wo = QT == QType::Q4_1 ? half_to_float(b + 2) : -8.f * d;
      }
      for (int r = 0; r < n; ++r) {
        const int64_t m = m0 + r;
        __m256i x = load32(xq.q32.data() + m * K + 32 * blk);
        if constexpr (QT == QType::Q8_0) x = _mm256_sign_epi8(x, sign);
        const float dx = xq.d32[m * (K / 32) + blk];
        if constexpr (QT != QType::Q8_0)
          acc_min[r] = std::fma(wo * dx, float(xq.sum32[m * (K / 32) + blk]), acc_min[r]);
        acc[r] = fmadd(splat(d * dx), to_vfloat(dot_u8s8(u, x)), acc[r]);
      }
    }
    for (int r = 0; r < n; ++r) out[r] = reduce_lanes(acc[r]) + acc_min[r];
  }
}

#endif  // __AVX2__

// y = x W^T + b over `parts` (every part of a q8-supported format) for weight rows of work items
// [begin, end), x given quantised. Needs an AVX2 build (q8_available()).
inline bool q8_available() {
#if defined(__AVX2__)
  return true;
#else
  return false;
#endif
}

inline void linear_q8(const Q8Rows& xq, const float* bias, float* y, int64_t M, int64_t N,
                      const std::vector<PackedPart>& parts, const std::vector<PackedGroup>& groups, int64_t begin,
                      int64_t end) {
#if defined(__AVX2__)
  for (int64_t g = begin; g < end; ++g) {
    const PackedGroup& group = groups[g];
    const PackedPart& part = parts[group.part];
    dispatch_qtype(part.qtype, [&](auto qt) {
      constexpr QType QT = decltype(qt)::value;
      if constexpr (QT == QType::Q4_0 || QT == QType::Q4_1 || QT == QType::Q8_0 || QT == QType::Q4_K ||
                    QT == QType::Q6_K) {
        float out[kQ8Rows];
        for (int64_t r = group.first; r < group.first + group.rows; ++r) {
          const uint8_t* row = part.data + r * part.row_bytes;
          const int64_t n = part.first_row + r;
          for (int64_t m0 = 0; m0 < M; m0 += kQ8Rows) {
            const int rows = int(std::min<int64_t>(kQ8Rows, M - m0));
            if (rows == 1) dot_q8<QT, 1>(row, xq, m0, 1, out);
            else dot_q8<QT, kQ8Rows>(row, xq, m0, rows, out);
            for (int i = 0; i < rows; ++i) y[(m0 + i) * N + n] = bias != nullptr ? out[i] + bias[n] : out[i];
          }
        }
      }
    });
  }
#else
  (void)xq, (void)bias, (void)y, (void)M, (void)N, (void)parts, (void)groups, (void)begin, (void)end;
#endif
}

}  // namespace pyspec::cpu
