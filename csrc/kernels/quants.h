// GGUF (ggml) quantised block formats, decoded on the CPU into floats. Torch-free.
//
// A packed weight row of K values is K / block_values blocks of block_bytes bytes, as ggml stores it.
// dequant_blocks() gives each value exactly as gguf-py's numpy reference (gguf.quants.dequantize) does:
// float16 scales widen exactly, and every formula below rounds as numpy's float32 does. In every
// format, the product of a scale and a quant is exact in float32 (at most 11 + 7 + 6 bits), so the
// only rounding is the final add of a minimum (Q4_1, Q5_1, Q4_K, Q5_K): fused or not, one rounding.
// Hence a linear over packed rows that widens them with this header gives the bits of a linear over
// the dequantised fp32 tensor (csrc/kernels/linear_packed.h).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd.h"

namespace pyspec::cpu {

// ggml's type codes (GGMLQuantizationType) of the formats pyspec decodes.
enum class QType : int { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

struct QFormat {
  int64_t block_values;  // weights per block
  int64_t block_bytes;   // bytes per block
};

// The format of a type code; block_values == 0 for a code pyspec does not decode.
inline QFormat qformat(int code) {
  switch (static_cast<QType>(code)) {
    case QType::Q4_0: return {32, 18};
    case QType::Q4_1: return {32, 20};
    case QType::Q5_0: return {32, 22};
    case QType::Q5_1: return {32, 24};
    case QType::Q8_0: return {32, 34};
    case QType::Q4_K: return {256, 144};
    case QType::Q5_K: return {256, 176};
    case QType::Q6_K: return {256, 210};
  }
  return {0, 0};
}

// IEEE half -> float, exactly (normals, subnormals, infinities, NaN).
inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  memcpy(&h, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    uint32_t m = man;
    do {
      m <<= 1;
      ++e;
    } while ((m & 0x400) == 0);
    bits = sign | uint32_t(112 - e) << 23 | ((m & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
#endif
}

// 8 bytes at p widened to int32 lanes (unsigned / signed): AVX2's vpmovzxbd / vpmovsxbd.
// 8 bytes at p widened to int32 lanes, unsigned (B = uint8_t) or signed (int8_t): vpmovzxbd / vpmovsxbd.
template <typename B>
inline vint widen8(const uint8_t* p) {
#if defined(__AVX2__)
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<vint>(std::is_signed_v<B> ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
#else
  typedef B vbytes __attribute__((vector_size(kLanes)));
  vbytes v;
  memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, vint);
#endif
}
inline vint widen_bytes(const uint8_t* p) { return widen8<uint8_t>(p); }
inline vint widen_signed_bytes(const uint8_t* p) { return widen8<int8_t>(p); }
inline vfloat to_vfloat(vint v) { return __builtin_convertvector(v, vfloat); }

// Q4_K / Q5_K's 8 six-bit scales (out[0..7]) and minimums (out[8..15]) from a block's 12 scale bytes
// (gguf-py's Q4_K.get_scale_min), unpacked with word operations.
inline void scales_mins_k4(const uint8_t* s, uint8_t* out) {
  uint32_t u[4];
  memcpy(u, s, 12);
  const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
  u[3] = ((u[2] >> 4) & m2) | (((u[1] >> 6) & m3) << 4);
  const uint32_t mins_low = u[1] & m1;
  u[1] = (u[2] & m2) | (((u[0] >> 6) & m3) << 4);
  u[2] = mins_low;
  u[0] &= m1;
  memcpy(out, u, 16);
}

// Decoder of one 32-value sub-block j of a block of format QT: get(i) gives values 8i .. 8i + 7 as
// floats, each computed as fmadd(scale, q, offset). The scale times the quant is exact, so this is
// the single rounding of numpy's (scale * q) + offset (and exact where numpy's offset is in q).
template <QType QT>
struct SubBlock;

// Q4_0, Q4_1, Q5_0, Q5_1: d (f16), [m (f16)], [qh (u32): fifth bits], qs[16]: value j is the low nibble
// of qs[j], value 16 + j its high nibble; Q4_0: d (q - 8), Q5_0: d (q - 16), the others d q + m.
template <QType QT>
struct SmallBlock {
  static constexpr bool has_min = QT == QType::Q4_1 || QT == QType::Q5_1;
  static constexpr bool five = QT == QType::Q5_0 || QT == QType::Q5_1;
  const uint8_t* qs;
  vuint high;  // the fifth bits' word in every lane
  vfloat d, offset;

  SmallBlock(const uint8_t* b, int /*j*/) {
    const float dd = half_to_float(b);
    qs = b + (has_min ? 4 : 2) + (five ? 4 : 0);
    uint32_t h = 0;
    if (five) memcpy(&h, b + (has_min ? 4 : 2), 4);
    high = vuint{} + h;
    d = splat(dd);
    offset = splat(has_min ? half_to_float(b + 2) : dd * (five ? -16.f : -8.f));  // d * -8 is exact
  }
  vfloat get(int i) const {
    vint q = widen_bytes(qs + (i % 2) * kLanes);
    q = i < 2 ? (q & 15) : (q >> 4);
    if constexpr (five) {
      const vint bit = vint{0, 1, 2, 3, 4, 5, 6, 7} + i * kLanes;  // value index 8i .. 8i + 7
      q |= reinterpret_cast<vint>(((high >> reinterpret_cast<vuint>(bit)) & 1u) << 4);
    }
    return fmadd(d, to_vfloat(q), offset);
  }
};
template <> struct SubBlock<QType::Q4_0> : SmallBlock<QType::Q4_0> { using SmallBlock::SmallBlock; };
template <> struct SubBlock<QType::Q4_1> : SmallBlock<QType::Q4_1> { using SmallBlock::SmallBlock; };
template <> struct SubBlock<QType::Q5_0> : SmallBlock<QType::Q5_0> { using SmallBlock::SmallBlock; };
template <> struct SubBlock<QType::Q5_1> : SmallBlock<QType::Q5_1> { using SmallBlock::SmallBlock; };

// Q8_0: d (f16), qs[32] (int8): d q.
template <>
struct SubBlock<QType::Q8_0> {
  const uint8_t* qs;
  vfloat d;
  SubBlock(const uint8_t* b, int /*j*/) : qs(b + 2), d(splat(half_to_float(b))) {}
  vfloat get(int i) const { return to_vfloat(widen_signed_bytes(qs + i * kLanes)) * d; }
};

// Q4_K, Q5_K: d, dmin (f16), scales[12], [qh[32]], qs[128]; sub-block j: (d sc_j) q - dmin m_j, q the
// low (j even) or high (j odd) nibbles of qs[32 (j / 2) ..], plus bit j of qh[l] as the fifth bit.
template <QType QT>
struct KBlock {
  static constexpr bool five = QT == QType::Q5_K;
  const uint8_t* qs;
  const uint8_t* qh;
  int j;
  vfloat dl, offset;
  KBlock(const uint8_t* b, int j_) : j(j_) {
    uint8_t sm[16];
    scales_mins_k4(b + 4, sm);
    dl = splat(half_to_float(b) * float(sm[j]));
    offset = splat(-(half_to_float(b + 2) * float(sm[8 + j])));
    qh = b + 16;
    qs = b + 16 + (five ? 32 : 0) + (j / 2) * 32;
  }
  vfloat get(int i) const {
    vint q = widen_bytes(qs + i * kLanes);
    q = j % 2 == 0 ? (q & 15) : (q >> 4);
    if constexpr (five) q |= ((widen_bytes(qh + i * kLanes) >> j) & 1) << 4;
    return fmadd(dl, to_vfloat(q), offset);
  }
};
template <> struct SubBlock<QType::Q4_K> : KBlock<QType::Q4_K> { using KBlock::KBlock; };
template <> struct SubBlock<QType::Q5_K> : KBlock<QType::Q5_K> { using KBlock::KBlock; };

// Q6_K: ql[128], qh[64], scales[16] (int8), d (f16); sub-block t = 4 h + u: q = 4 bits of
// ql[64 h + 32 (u % 2) + l] (shifted by 4 (u / 2)) | 2 bits of qh[32 h + l] (shifted by 2 u) << 4;
// (d scale) (q - 32), one scale per 16 values.
template <>
struct SubBlock<QType::Q6_K> {
  alignas(32) uint8_t q[32];  // the sub-block's 6-bit quants, decoded with byte operations
  vfloat dl[2], offset[2];
  SubBlock(const uint8_t* b, int t) {
    const int h = t / 4, u = t % 4;
    const uint8_t* ql = b + h * 64 + (u % 2) * 32;
    const uint8_t* qh = b + 128 + h * 32;
#if defined(__AVX2__)
    const __m256i lo_bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
    const __m256i hi_bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
    const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
    const __m256i lo = _mm256_and_si256(u < 2 ? lo_bytes : _mm256_srli_epi16(lo_bytes, 4), low4);
    __m256i hi;  // bits 2u, 2u + 1 of qh moved to bits 4, 5
    switch (u) {
      case 0: hi = _mm256_slli_epi16(hi_bytes, 4); break;
      case 1: hi = _mm256_slli_epi16(hi_bytes, 2); break;
      case 2: hi = hi_bytes; break;
      default: hi = _mm256_srli_epi16(hi_bytes, 2); break;
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(q), _mm256_or_si256(lo, _mm256_and_si256(hi, bits45)));
#else
    for (int l = 0; l < 32; ++l)
      q[l] = uint8_t(((ql[l] >> (4 * (u / 2))) & 15) | (((qh[l] >> (2 * u)) & 3) << 4));
#endif
    const float d = half_to_float(b + 208);
    for (int s = 0; s < 2; ++s) {
      const float scale = d * float(reinterpret_cast<const int8_t*>(b + 192)[2 * t + s]);
      dl[s] = splat(scale);
      offset[s] = splat(scale * -32.f);  // exact: (d scale) q - 32 (d scale) = (d scale) (q - 32)
    }
  }
  vfloat get(int i) const { return fmadd(dl[i / 2], to_vfloat(widen_bytes(q + i * kLanes)), offset[i / 2]); }
};

// The block_values floats of one block of format QT at `b`.
template <QType QT>
inline void dequant_block(const uint8_t* b, float* out) {
  constexpr int subs = (QT == QType::Q4_K || QT == QType::Q5_K || QT == QType::Q6_K) ? 8 : 1;
  for (int j = 0; j < subs; ++j) {
    const SubBlock<QT> s(b, j);
    for (int i = 0; i < 4; ++i) store(out + 32 * j + kLanes * i, s.get(i));
  }
}

// n consecutive blocks of format QT from `blocks` into out[n * block_values].
template <QType QT>
inline void dequant_blocks(const uint8_t* blocks, int64_t n, float* out) {
  const QFormat f = qformat(static_cast<int>(QT));
  for (int64_t i = 0; i < n; ++i) dequant_block<QT>(blocks + i * f.block_bytes, out + i * f.block_values);
}

// Calls f(std::integral_constant<QType, ...>) for a type code pyspec decodes; false for another code.
template <typename F>
inline bool dispatch_qtype(int code, F&& f) {
  switch (static_cast<QType>(code)) {
    case QType::Q4_0: f(std::integral_constant<QType, QType::Q4_0>{}); return true;
    case QType::Q4_1: f(std::integral_constant<QType, QType::Q4_1>{}); return true;
    case QType::Q5_0: f(std::integral_constant<QType, QType::Q5_0>{}); return true;
    case QType::Q5_1: f(std::integral_constant<QType, QType::Q5_1>{}); return true;
    case QType::Q8_0: f(std::integral_constant<QType, QType::Q8_0>{}); return true;
    case QType::Q4_K: f(std::integral_constant<QType, QType::Q4_K>{}); return true;
    case QType::Q5_K: f(std::integral_constant<QType, QType::Q5_K>{}); return true;
    case QType::Q6_K: f(std::integral_constant<QType, QType::Q6_K>{}); return true;
  }
  return false;
}

}  // namespace pyspec::cpu
