// dtype dispatch of the CPU wrappers: float32 and bfloat16.
#pragma once

#include <ATen/ATen.h>

#include "../../kernels/common.h"

namespace pyspec {

template <typename F>
void dispatch_cpu_dtype(at::ScalarType dt, F&& f) {
  if (dt == at::kFloat) f(float{});
  else if (dt == at::kBFloat16) f(bf16{});
  else TORCH_CHECK(false, "pyspec: unsupported dtype ", dt, " on CPU (float32 or bfloat16)");
}

template <typename T>
T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

}  // namespace pyspec
