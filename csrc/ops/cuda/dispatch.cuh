// dtype dispatch and pointer casts of the CUDA wrappers: float32, bfloat16 and float16.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pyspec {

template <typename F>
void dispatch_cuda_dtype(at::ScalarType dt, F&& f) {
  if (dt == at::kFloat) f(float{});
  else if (dt == at::kBFloat16) f(__nv_bfloat16{});
  else if (dt == at::kHalf) f(__half{});
  else TORCH_CHECK(false, "pyspec: unsupported dtype ", dt, " on CUDA (float32, bfloat16 or float16)");
}

template <typename T>
T* cuda_ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "pyspec: ", op, " CUDA launch failed: ", cudaGetErrorString(err));
}

// Device copies of host-validated int32 metadata (contiguous), on the cache's device.
inline at::Tensor to_device(const at::Tensor& host, const at::Tensor& like) {
  return host.to(like.device(), /*non_blocking=*/false).contiguous();
}

inline PageTables device_tables(const at::Tensor& page_table, const at::Tensor& kv_lens) {
  return {kv_lens.size(0), page_table.size(1), page_table.data_ptr<int32_t>(), kv_lens.data_ptr<int32_t>()};
}

}  // namespace pyspec
