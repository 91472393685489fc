// CUDA linear layer y = x W^T + b, torch-free (nvcc builds this file alone in a test).
//
// One warp per (output feature, block of up to kRowsPerWarp x rows): lane l accumulates k = l, l + 32, ...
// in order with fused multiply-adds in float, then a fixed butterfly over the 32 lanes, then the bias.
// That order depends only on K, so each output is bitwise the same whatever M, the row blocking or the
// grid. Simple and exact rather than fast: every warp streams its weight row once per row block (from
// L2 after the first); a tensor-core GEMM with a fixed split would serve large M better.
#include "cuda_kernels.h"
#include "cuda_types.cuh"

namespace pyspec::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;   // output features per thread block
constexpr int kRowsPerWarp = 4;     // x rows sharing each weight load
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    linear_kernel(const T* x, const T* weight, const T* bias, T* y, int64_t M, int64_t N, int64_t K) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N) return;  // the whole warp leaves together
  const T* w = weight + n * K;
  for (int64_t m0 = int64_t(blockIdx.y) * kRowsPerWarp; m0 < M; m0 += int64_t(gridDim.y) * kRowsPerWarp) {
    const int64_t rows = M - m0 < kRowsPerWarp ? M - m0 : kRowsPerWarp;
    float acc[kRowsPerWarp] = {};
    for (int64_t k = lane; k < K; k += 32) {
      const float wk = load_f(w[k]);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r)
        if (r < rows) acc[r] = fmaf(wk, load_f(x[(m0 + r) * K + k]), acc[r]);
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float s = acc[r];
      for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
      if (lane == 0 && r < rows) y[(m0 + r) * N + n] = store_f<T>(bias != nullptr ? s + load_f(bias[n]) : s);
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_linear(const T* x, const T* weight, const T* bias, T* y, int64_t M, int64_t N, int64_t K,
                          cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  const int64_t feature_blocks = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t row_blocks = (M + kRowsPerWarp - 1) / kRowsPerWarp;
  const dim3 grid(unsigned(feature_blocks), unsigned(row_blocks < kMaxGridY ? row_blocks : kMaxGridY));
  linear_kernel<T><<<grid, kWarpsPerBlock * 32, 0, stream>>>(x, weight, bias, y, M, N, K);
  return cudaGetLastError();
}

#define PYSPEC_INSTANTIATE(T) \
  template cudaError_t launch_linear<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, cudaStream_t);
PYSPEC_FOR_EACH_CUDA_DTYPE(PYSPEC_INSTANTIATE)
#undef PYSPEC_INSTANTIATE

}  // namespace pyspec::cuda
