// Argument checks of the linear op, shared by the CPU and CUDA wrappers: everything a caller can get
// wrong is a TORCH_CHECK naming the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "checks.h"

namespace pyspec {

// x [M, K], weight [N, K] (nn.Linear layout), bias [N] or none: one dtype (float32 or bfloat16, or
// float16 on CUDA), one device, contiguous.
inline void check_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "pyspec: x must be 2-D [M, K], got shape ", shape_str(x));
  TORCH_CHECK(weight.dim() == 2, "pyspec: weight must be 2-D [N, K] (nn.Linear layout), got shape ",
              shape_str(weight));
  TORCH_CHECK(weight.size(1) == x.size(1), "pyspec: weight must be [N, ", x.size(1), "] (K of x ", shape_str(x),
              "), got ", shape_str(weight));
  const auto dt = weight.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kBFloat16 || (dt == at::kHalf && weight.is_cuda());
  TORCH_CHECK(ok, "pyspec: weight must be float32 or bfloat16 (or float16 on CUDA), got ", dt, " on ",
              weight.device());
  TORCH_CHECK(x.scalar_type() == dt, "pyspec: x dtype ", x.scalar_type(), " must match the weight dtype ", dt);
  TORCH_CHECK(x.device() == weight.device(), "pyspec: x is on ", x.device(), " but weight is on ", weight.device());
  TORCH_CHECK(x.is_contiguous(), "pyspec: x must be contiguous");
  TORCH_CHECK(weight.is_contiguous(), "pyspec: weight must be contiguous");
  if (!bias.has_value()) return;
  const at::Tensor& b = *bias;
  TORCH_CHECK(b.dim() == 1 && b.size(0) == weight.size(0), "pyspec: bias must be [N = ", weight.size(0),
              "], got shape ", shape_str(b));
  TORCH_CHECK(b.scalar_type() == dt, "pyspec: bias dtype ", b.scalar_type(), " must match the weight dtype ", dt);
  TORCH_CHECK(b.device() == weight.device(), "pyspec: bias is on ", b.device(), " but weight is on ",
              weight.device());
  TORCH_CHECK(b.is_contiguous(), "pyspec: bias must be contiguous");
}

}  // namespace pyspec
