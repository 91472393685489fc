// Argument checks of the elementwise decoder ops (RMSNorm, SwiGLU's activation).
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "checks.h"

namespace pyspec {

inline void check_float_rows(const at::Tensor& x, const char* name) {
  const auto dt = x.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kBFloat16 || (dt == at::kHalf && x.is_cuda());
  TORCH_CHECK(ok, "pyspec: ", name, " must be float32 or bfloat16 (or float16 on CUDA), got ", dt, " on ", x.device());
  TORCH_CHECK(x.dim() == 2, "pyspec: ", name, " must be 2-D [num_tokens, width], got shape ", shape_str(x));
  TORCH_CHECK(x.is_contiguous(), "pyspec: ", name, " must be contiguous");
}

// x [T, D] (and residual [T, D]), weight [D]: one dtype, one device, contiguous; eps finite, >= 0.
inline void check_rms_norm(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, double eps) {
  check_float_rows(x, "x");
  if (residual != nullptr) {
    TORCH_CHECK(residual->sizes() == x.sizes(), "pyspec: residual must have the shape of x ", shape_str(x),
                ", got ", shape_str(*residual));
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), "pyspec: residual dtype ", residual->scalar_type(),
                " must match x's ", x.scalar_type());
    TORCH_CHECK(residual->device() == x.device(), "pyspec: residual is on ", residual->device(), " but x is on ",
                x.device(), "; all arguments must be on one device");
    TORCH_CHECK(residual->is_contiguous(), "pyspec: residual must be contiguous");
  }
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1), "pyspec: weight must be [", x.size(1),
              "], got shape ", shape_str(weight));
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "pyspec: weight dtype ", weight.scalar_type(),
              " must match x's ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "pyspec: weight is on ", weight.device(), " but x is on ", x.device(),
              "; all arguments must be on one device");
  TORCH_CHECK(weight.is_contiguous(), "pyspec: weight must be contiguous");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "pyspec: eps must be finite and >= 0, got ", eps);
}

inline void check_silu_mul(const at::Tensor& x) {
  check_float_rows(x, "x");
  TORCH_CHECK(x.size(1) % 2 == 0, "pyspec: x must be [num_tokens, 2 * intermediate] (gate | up), got an odd width ",
              x.size(1));
}

}  // namespace pyspec
