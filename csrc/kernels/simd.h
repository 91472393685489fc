// Portable SIMD helpers of the CPU kernels: 8-lane float vectors with GCC vector extensions (AVX2 with
// -march=native, also fine on SSE/NEON). Torch-free.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace pyspec::cpu {

constexpr int kLanes = 8;  // floats per vector register (AVX2)

typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint16_t vhalf __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint32_t vuint __attribute__((vector_size(kLanes * sizeof(uint32_t))));

inline vfloat splat(float x) { return vfloat{} + x; }
inline vfloat load(const float* p) {
  vfloat v;
  memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vfloat v) { memcpy(p, &v, sizeof(v)); }

// a * b + c with one rounding where the target has FMA (else two): always the same instruction, so a
// kernel's result never depends on how the compiler contracted an expression.
inline vfloat fmadd(vfloat a, vfloat b, vfloat c) {
#if defined(__FMA__) && defined(__AVX__)
  return reinterpret_cast<vfloat>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                                  reinterpret_cast<__m256>(c)));
#else
  return a * b + c;
#endif
}

// kLanes bfloat16 values widened to float (exact: a bfloat16 is the upper half of a float).
inline vfloat load(const bf16* p) {
  vhalf h;
  memcpy(&h, p, sizeof(h));
  const vuint u = __builtin_convertvector(h, vuint) << 16;
  vfloat v;
  memcpy(&v, &u, sizeof(v));
  return v;
}

// The first n < kLanes values at p, the other lanes zero.
inline vfloat load_partial(const float* p, int64_t n) {
  vfloat v = {};
  for (int i = 0; i < kLanes; ++i)
    if (i < n) v[i] = p[i];
  return v;
}
inline vfloat load_partial(const bf16* p, int64_t n) {
  vfloat v = {};
  for (int i = 0; i < kLanes; ++i)
    if (i < n) v[i] = to_float(p[i]);
  return v;
}

// The fixed horizontal sum of an accumulator: ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)).
inline float reduce_lanes(vfloat v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// Pairwise sums of neighbouring lanes within each 128-bit half (AVX's vhaddps):
// [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7].
inline vfloat hadd(vfloat a, vfloat b) {
#if defined(__AVX__)
  return reinterpret_cast<vfloat>(_mm256_hadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b)));
#else
  return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
         __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
#endif
}

// reduce_lanes of four accumulators at once: the same additions in the same order.
inline void reduce_lanes4(vfloat a0, vfloat a1, vfloat a2, vfloat a3, float* out) {
  const vfloat h = hadd(hadd(a0, a1), hadd(a2, a3));  // reduce_lanes(a_i) = h[i] + h[i + 4]
  for (int i = 0; i < 4; ++i) out[i] = h[i] + h[i + 4];
}

// The first min(n, kLanes) values at p (n >= 1), the other lanes zero; and the matching store.
template <typename T>
inline vfloat load_n(const T* p, int64_t n) {
  return n >= kLanes ? load(p) : load_partial(p, n);
}

template <typename T>
inline void store_n(T* p, vfloat v, int64_t n) {
  for (int i = 0; i < kLanes && i < n; ++i) p[i] = from_float<T>(v[i]);
}
template <>
inline void store_n<float>(float* p, vfloat v, int64_t n) {
  if (n >= kLanes) store(p, v);
  else
    for (int i = 0; i < n; ++i) p[i] = v[i];
}

// Sum of the lanes, sequential.
inline float hsum(vfloat v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}
inline float hmax(vfloat v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}

}  // namespace pyspec::cpu
