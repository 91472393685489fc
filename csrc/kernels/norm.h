// CPU kernels of the decoder's elementwise steps, on raw pointers: RMSNorm (with the residual add
// fused in) and SwiGLU's silu(gate) * up. Each does rows [begin, end); the caller parallelises.
//
// Row invariance. Every row is computed alone in one fixed order that depends only on its width:
// RMSNorm's sum of squares runs over k in order in lane k % 8 (the last partial vector zero-padded),
// then the lanes are summed ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), as in linear.h. So a
// token's result is the same bits alone or inside a block, on any number of threads.
//
// Rounding follows transformers' Llama in the storage type T: (x + residual) is rounded to T,
// normalised in float, rounded to T, then multiplied by the weight and rounded to T again;
// silu(gate) is rounded to T before the product with up.
#pragma once

#include <cmath>
#include <type_traits>

#include "common.h"
#include "simd.h"

namespace pyspec::cpu {

// Rounds every lane through T (identity for float; round-to-nearest-even to bfloat16).
template <typename T>
inline vfloat round_to(vfloat v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    for (int i = 0; i < kLanes; ++i) v[i] = to_float(from_float<T>(v[i]));
    return v;
  }
}

// out[r] = rms_norm(x[r] (+ residual[r])) * weight for rows [begin, end) of width D; with a residual,
// sum[r] = x[r] + residual[r] (the new residual stream) is written too. residual and sum may be null.
template <typename T>
void rms_norm(const T* x, const T* residual, const T* weight, float eps, T* out, T* sum, int64_t D,
              int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * D;
    const T* src = xr;
    if (residual != nullptr) {  // sum = round_T(x + residual), then normalise the sum
      const T* rr = residual + r * D;
      T* sr = sum + r * D;
      for (int64_t k = 0; k < D; k += kLanes)
        store_n(sr + k, load_n(xr + k, D - k) + load_n(rr + k, D - k), D - k);
      src = sr;
    }
    vfloat acc = {};
    for (int64_t k = 0; k < D; k += kLanes) {
      const vfloat v = load_n(src + k, D - k);
      acc = fmadd(v, v, acc);
    }
    const float mean = reduce_lanes(acc) / float(D);
    const float inv = 1.f / std::sqrt(mean + eps);
    const vfloat s = splat(inv);
    T* o = out + r * D;
    for (int64_t k = 0; k < D; k += kLanes) {
      const vfloat normed = round_to<T>(load_n(src + k, D - k) * s);
      store_n(o + k, load_n(weight + k, D - k) * normed, D - k);
    }
  }
}

// e^x for every lane (Cephes' single-precision polynomial, ~1 ulp): +inf above ~88.72, 0 below ~-87.34.
inline vfloat exp_vec(vfloat x) {
  const vfloat hi = splat(88.7228f), lo = splat(-87.3365f);
  vfloat xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  const vfloat magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat t = xc * 1.44269504088896341f + magic;
  const vfloat n = t - magic;  // round(x / ln 2)
  vfloat r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  // 2^n as 2^(n - 1) * 2 for n > 0, so that n = 128 (x near the top) does not overflow the exponent.
  const vint ni = __builtin_convertvector(n, vint);
  const vint up = ni > 0;  // -1 where n > 0
  const vint bits = (ni + up + 127) << 23;
  vfloat scale;
  memcpy(&scale, &bits, sizeof(scale));
  vfloat e = p * scale;
  e = ni > 0 ? e * 2.f : e;
  const vfloat inf = splat(INFINITY);
  e = x > hi ? inf : e;
  return x < lo ? vfloat{} : e;
}

// out[r, i] = silu(x[r, i]) * x[r, I + i] for rows [begin, end) of x [rows, 2I] (gate | up).
template <typename T>
void silu_mul(const T* x, T* out, int64_t I, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const T* gate = x + r * 2 * I;
    const T* up = gate + I;
    T* o = out + r * I;
    for (int64_t i = 0; i < I; i += kLanes) {
      const vfloat g = load_n(gate + i, I - i);
      const vfloat silu = round_to<T>(g / (1.f + exp_vec(-g)));
      store_n(o + i, silu * load_n(up + i, I - i), I - i);
    }
  }
}

}  // namespace pyspec::cpu
