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

#include "cpu_isa.h"
#include "linear_packed.h"
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
// (q32, d32, sum32: for the 32-value block formats) and per 256 values (q256, d256, and the sums of
// every 16 and 32 values, sum16 and sum32k: for the K-quants' minimums). Row m occupies
// [m * K, (m + 1) * K) of q32 and q256. A sum of 32 int8 fits in int16 (|sum| <= 4064).
struct Q8Rows {
  std::vector<int8_t> q32, q256;
  std::vector<float> d32, d256;
  std::vector<int32_t> sum32;
  std::vector<int16_t> sum16, sum32k;
  int64_t K = 0;

  Q8Rows(int64_t M, int64_t K_)
      : q32(M * K_), q256(K_ % 256 == 0 ? M * K_ : 0), d32(M * K_ / 32), d256(M * K_ / 256),
        sum32(M * K_ / 32), sum16(M * K_ / 16), sum32k(M * K_ / 32), K(K_) {}
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
      out.sum16[m * (K / 16) + 16 * b + g] = int16_t(s);
    }
    for (int g = 0; g < 8; ++g)
      out.sum32k[m * (K / 32) + 8 * b + g] =
          int16_t(out.sum16[m * (K / 16) + 16 * b + 2 * g] + out.sum16[m * (K / 16) + 16 * b + 2 * g + 1]);
  }
}

#if defined(__AVX2__)

inline __m256i load32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m128i load16(const void* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline vfloat to_vfloat(__m256i v) { return reinterpret_cast<vfloat>(_mm256_cvtepi32_ps(v)); }

// 8 int32 partial sums of 32 products u8 * s8 (lane j: values 4j .. 4j + 3): exact.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// The sum of 8 / 4 int32 lanes (exact: any order).
inline int32_t hsum_i32(__m128i v) {
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(v);
}
inline int32_t hsum_i32(__m256i v) {
  return hsum_i32(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

// The integer minimums' term of K-quant block `blk` of x row m: Q4_K: sum_j m_j sum32_j(q) (mins: the
// block's 8 minimums); Q6_K: 32 sum_g sc_g sum16_g(q) (the -32 offset of its quants; sc its 16 scales).
template <QType QT>
inline int32_t kquant_min_term(const uint8_t* mins_or_scales, const Q8Rows& xq, int64_t m, int64_t blk) {
  if constexpr (QT == QType::Q4_K) {
    const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mins_or_scales)));
    return hsum_i32(_mm_madd_epi16(mins, load16(xq.sum32k.data() + m * (xq.K / 32) + 8 * blk)));
  } else {
    const __m256i sc = _mm256_cvtepi8_epi16(load16(mins_or_scales));
    return 32 * hsum_i32(_mm256_madd_epi16(sc, load32(xq.sum16.data() + m * (xq.K / 16) + 16 * blk)));
  }
}

// The float steps of K-quant block blk for x row m, the same in every tier: (d dx) times the 8 lane
// sums of scaled integer products into acc, and (dmin dx, Q6_K: d dx) times the minimums' term into
// acc_min (min_bytes: Q4_K's 8 minimums, Q6_K's 16 scales).
template <QType QT>
inline void kquant_accumulate(__m256i isum, const uint8_t* min_bytes, float d, float dmin, const Q8Rows& xq,
                              int64_t m, int64_t blk, vfloat& acc, float& acc_min) {
  const float dx = xq.d256[m * (xq.K / 256) + blk];
  const int32_t imin = kquant_min_term<QT>(min_bytes, xq, m, blk);
  acc = fmadd(splat(d * dx), to_vfloat(isum), acc);
  acc_min = std::fma(QT == QType::Q4_K ? dmin * dx : d * dx, float(imin), acc_min);
}

// A 32-value block (Q4_0, Q4_1, Q8_0) for the q8 kernels of every tier: its unsigned quants u (Q8_0:
// |q|, x takes q's sign), scale d and offset wo (w = d u + wo); per x row, the integer sum of u x
// (each tier's instruction) enters two accumulators, (d dx) isum by lanes and (wo dx) sum(x).
template <QType QT>
struct SmallQ8Block {
  __m256i u, sign = _mm256_setzero_si256();
  float d, wo = 0.f;

  explicit SmallQ8Block(const uint8_t* b) : d(half_to_float(b)) {
    if constexpr (QT == QType::Q8_0) {
      sign = load32(b + 2);
      u = _mm256_sign_epi8(sign, sign);
    } else {
      const __m128i raw = load16(b + (QT == QType::Q4_1 ? 4 : 2));
      u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0f));
      wo = QT == QType::Q4_1 ? half_to_float(b + 2) : -8.f * d;
    }
  }
  // x row m's quants of block blk (with q's sign for Q8_0)
  __m256i x(const Q8Rows& xq, int64_t m, int64_t blk) const {
    const __m256i v = load32(xq.q32.data() + m * xq.K + 32 * blk);
    if constexpr (QT == QType::Q8_0) return _mm256_sign_epi8(v, sign);
    return v;
  }
  void accumulate(__m256i isum, const Q8Rows& xq, int64_t m, int64_t blk, vfloat& acc, float& acc_min) const {
    const int64_t i = m * (xq.K / 32) + blk;
    if constexpr (QT != QType::Q8_0) acc_min = std::fma(wo * xq.d32[i], float(xq.sum32[i]), acc_min);
    acc = fmadd(splat(d * xq.d32[i]), to_vfloat(isum), acc);
  }
};

// Dot products of one packed weight row with x rows [m0, m0 + n) of the quantised x, into out[n].
// Each weight block is decoded once for all n rows. Per row, two accumulators in a fixed order: 8
// float lanes for the scaled integer sums, one float for the minimums' term.
constexpr int kQ8Rows = 8;  // x rows per pass over a weight row

// NR: the most rows (1: a decoding step, specialised; kQ8Rows: any n <= kQ8Rows). AVX2.
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
      const uint8_t* min_bytes;  // Q4_K: its minimums; Q6_K: its scales
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
        min_bytes = sm + 8;
      } else {  // Q6_K: w = d sc (u - 32) per 16 values: I = sum sc sum(u q) - 32 sum sc sum(q)
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
        for (int t = 0; t < 8; ++t) {
          const SubBlock<QType::Q6_K> sub(b, t);
          u[t] = load32(sub.q);
          scales[t] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * t + 1]), _mm_set1_epi16(sc[2 * t]));
        }
        d = half_to_float(b + 208);
        min_bytes = b + 192;
      }
      for (int r = 0; r < n; ++r) {
        const int64_t m = m0 + r;
        const int8_t* qx = xq.q256.data() + m * K + 256 * blk;
        __m256i isum = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j)
          isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(u[j], load32(qx + 32 * j)), scales[j]));
        kquant_accumulate<QT>(isum, min_bytes, d, dmin, xq, m, blk, acc[r], acc_min[r]);
      }
    }
    for (int r = 0; r < n; ++r) out[r] = reduce_lanes(acc[r]) - acc_min[r];
  } else {
    // x per 32 values; per block: (d dx) sum(u q) + (wo dx) sum(q)
    for (int64_t blk = 0; blk < K / 32; ++blk) {
      const SmallQ8Block<QT> s(w + blk * f.block_bytes);
      for (int r = 0; r < n; ++r) s.accumulate(dot_u8s8(s.u, s.x(xq, m0 + r, blk)), xq, m0 + r, blk, acc[r], acc_min[r]);
    }
    for (int r = 0; r < n; ++r) out[r] = reduce_lanes(acc[r]) + acc_min[r];
  }
}

#endif  // __AVX2__

#if defined(PYSPEC_HAVE_AVX512_KERNELS)

// GCC 12's AVX-512 headers warn on their own _mm256_undefined_si256() inside inserts and broadcasts.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// dot_q8 with AVX-512 VNNI: the same integer sums per lane (so the same bits), fewer instructions.
// K-quants: a 512-bit register holds two sub-blocks (64 quants) and vpdpwssd applies their 16-bit
// scales while it accumulates; the 16 int32 lanes fold to dot_q8's 8 (lane j of sub-block a plus
// lane j of sub-block b: integer adds, exact). 32-value formats: vpdpbusd replaces vpmaddubsw +
// vpmaddwd.
template <QType QT, int NR>
PYSPEC_TARGET_AVX512 void dot_q8_vnni(const uint8_t* w, const Q8Rows& xq, int64_t m0, int rows, float* out) {
  const int64_t K = xq.K;
  const QFormat f = qformat(static_cast<int>(QT));
  const int n = NR == 1 ? 1 : rows;
  vfloat acc[NR] = {};
  float acc_min[NR] = {};
  if constexpr (QT == QType::Q4_K || QT == QType::Q6_K) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int64_t blk = 0; blk < K / 256; ++blk) {
      const uint8_t* b = w + blk * f.block_bytes;
      __m512i u[4];   // quants of values 64p .. 64p + 63 (sub-blocks 2p, 2p + 1)
      __m512i sc[4];  // their 16-bit scales, one per pair of quants
      alignas(16) uint8_t sm[16];
      const uint8_t* min_bytes;
      float d, dmin = 0.f;
      if constexpr (QT == QType::Q4_K) {
        scales_mins_k4(b + 4, sm);
        // 32 bytes hold sub-block 2p (low nibbles) and 2p + 1 (high): both halves, shifted by 0 / 4
        const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
        const __m512i s16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm))));
        for (int p = 0; p < 4; ++p) {
          const __m512i v = _mm512_broadcast_i64x4(load32(b + 16 + 32 * p));
          u[p] = _mm512_and_si512(_mm512_srlv_epi16(v, shift), low4);
          const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi16(short(2 * p)), _mm256_set1_epi16(short(2 * p + 1)), 1);
          sc[p] = _mm512_permutexvar_epi16(idx, s16);
        }
        d = half_to_float(b);
        dmin = half_to_float(b + 2);
        min_bytes = sm + 8;
      } else {
        // ql[64 h ..] holds sub-blocks 4h, 4h + 1 (low nibbles) and 4h + 2, 4h + 3 (high); qh[32 h ..]
        // their fifth and sixth bits, at bits (0, 1), (2, 3), (4, 5), (6, 7)
        const __m512i bits45 = _mm512_set1_epi8(0x30);
        const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        const __m512i shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        for (int h = 0; h < 2; ++h) {
          const __m512i ql = _mm512_loadu_si512(b + 64 * h);
          const __m512i qh = _mm512_broadcast_i64x4(load32(b + 128 + 32 * h));
          u[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, low4), _mm512_and_si512(_mm512_sllv_epi16(qh, shl), bits45));
          u[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                                         _mm512_and_si512(_mm512_srlv_epi16(qh, shr), bits45));
        }
        const __m512i s16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(load16(b + 192)));  // 16 scales
        for (int p = 0; p < 4; ++p) {  // 16-bit lane i of pair p: scale 4p + i / 8
          const __m512i idx = _mm512_add_epi16(_mm512_set1_epi16(short(4 * p)),
                                               _mm512_set_epi64(0x0003000300030003, 0x0003000300030003, 0x0002000200020002,
                                                                0x0002000200020002, 0x0001000100010001, 0x0001000100010001, 0, 0));
          sc[p] = _mm512_permutexvar_epi16(idx, s16);
        }
        d = half_to_float(b + 208);
        min_bytes = b + 192;
      }
      for (int r = 0; r < n; ++r) {
        const int64_t m = m0 + r;
        const int8_t* qx = xq.q256.data() + m * K + 256 * blk;
        __m512i isum = _mm512_setzero_si512();
        for (int p = 0; p < 4; ++p)
          isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(u[p], _mm512_loadu_si512(qx + 64 * p)), sc[p]);
        const __m256i isum8 = _mm256_add_epi32(_mm512_castsi512_si256(isum), _mm512_extracti64x4_epi64(isum, 1));
        kquant_accumulate<QT>(isum8, min_bytes, d, dmin, xq, m, blk, acc[r], acc_min[r]);
      }
    }
    for (int r = 0; r < n; ++r) out[r] = reduce_lanes(acc[r]) - acc_min[r];
  } else {
    for (int64_t blk = 0; blk < K / 32; ++blk) {
      const SmallQ8Block<QT> s(w + blk * f.block_bytes);
      for (int r = 0; r < n; ++r) {
        const __m256i isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), s.u, s.x(xq, m0 + r, blk));
        s.accumulate(isum, xq, m0 + r, blk, acc[r], acc_min[r]);
      }
    }
    for (int r = 0; r < n; ++r) out[r] = reduce_lanes(acc[r]) + acc_min[r];
  }
}

#pragma GCC diagnostic pop

#endif  // PYSPEC_HAVE_AVX512_KERNELS

// y = x W^T + b over `parts` (every part of a q8-supported format) for weight rows of work items
// [begin, end), x given quantised, with the kernels of tier `isa`. Needs an AVX2 build (q8_available()).
inline bool q8_available() {
#if defined(__AVX2__)
  return true;
#else
  return false;
#endif
}

#if defined(__AVX2__)
// The rows of one work item with kernel tier Vnni (dot_q8_vnni) or not (dot_q8).
template <QType QT, bool Vnni>
void q8_group(const Q8Rows& xq, const float* bias, float* y, int64_t M, int64_t N, const PackedPart& part,
              const PackedGroup& group) {
  float out[kQ8Rows];
  for (int64_t r = group.first; r < group.first + group.rows; ++r) {
    const uint8_t* row = part.data + r * part.row_bytes;
    const int64_t n = part.first_row + r;
    for (int64_t m0 = 0; m0 < M; m0 += kQ8Rows) {
      const int rows = int(std::min<int64_t>(kQ8Rows, M - m0));
#if defined(PYSPEC_HAVE_AVX512_KERNELS)
      if constexpr (Vnni) {
        if (rows == 1) dot_q8_vnni<QT, 1>(row, xq, m0, 1, out);
        else dot_q8_vnni<QT, kQ8Rows>(row, xq, m0, rows, out);
      } else
#endif
      {
        if (rows == 1) dot_q8<QT, 1>(row, xq, m0, 1, out);
        else dot_q8<QT, kQ8Rows>(row, xq, m0, rows, out);
      }
      for (int i = 0; i < rows; ++i) y[(m0 + i) * N + n] = bias != nullptr ? out[i] + bias[n] : out[i];
    }
  }
}
#endif

inline void linear_q8(const Q8Rows& xq, const float* bias, float* y, int64_t M, int64_t N,
                      const std::vector<PackedPart>& parts, const std::vector<PackedGroup>& groups, int64_t begin,
                      int64_t end, Isa isa) {
#if defined(__AVX2__)
  const bool vnni = isa >= Isa::Avx512Vnni;
  for (int64_t g = begin; g < end; ++g) {
    const PackedGroup& group = groups[g];
    const PackedPart& part = parts[group.part];
    dispatch_qtype(part.qtype, [&](auto qt) {
      constexpr QType QT = decltype(qt)::value;
      if constexpr (QT == QType::Q4_0 || QT == QType::Q4_1 || QT == QType::Q8_0 || QT == QType::Q4_K ||
                    QT == QType::Q6_K) {
        if (vnni) q8_group<QT, true>(xq, bias, y, M, N, part, group);
        else q8_group<QT, false>(xq, bias, y, M, N, part, group);
      }
    });
  }
#else
  (void)xq, (void)bias, (void)y, (void)M, (void)N, (void)parts, (void)groups, (void)begin, (void)end, (void)isa;
#endif
}

}  // namespace pyspec::cpu
