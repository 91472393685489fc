// Element conversions of the CUDA kernels: float, bfloat16 and float16 stored, float computed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pyspec::cuda {

__device__ __forceinline__ float load_f(float x) { return x; }
__device__ __forceinline__ float load_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float load_f(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T store_f(float x);
template <>
__device__ __forceinline__ float store_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 store_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half store_f<__half>(float x) { return __float2half(x); }

// Instantiates a launcher template for each stored dtype.
#define PYSPEC_FOR_EACH_CUDA_DTYPE(MACRO) MACRO(float) MACRO(__nv_bfloat16) MACRO(__half)

}  // namespace pyspec::cuda
