// CUDA tree attention over a paged KV cache, torch-free (nvcc builds this file alone in a test).
//
// Same semantics as the CPU kernel (tree_attention.h): token i of sequence b sees its committed slots
// [0, L_b) and the new slots L_b + j with mask[i][j] (causal without a mask), whose K/V were written by
// paged_kv_append before this launch. One block per (new token, query head) walks the token's logical
// key list in tiles of kThreads keys with an online softmax; the tiling depends only on that list, so
// a row's result does not change with the number of tokens or sequences in the launch.
// Napkin math: each block reads its keys once per query head (GQA groups re-read K/V from L2); fine
// for verification-sized trees, a split-KV variant would serve long-context decoding better.
#include <cfloat>

#include "cuda_kernels.h"
#include "cuda_types.cuh"

namespace pyspec::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kDimsPerThread = (kMaxHeadDim + kThreads - 1) / kThreads;

template <typename Op>
__device__ float block_reduce(float x, Op op, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read from the previous reduction
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) r = op(r, scratch[w]);
  return r;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) tree_attention_kernel(TreeAttentionParams<T> p) {
  const int64_t t = blockIdx.x, hq = blockIdx.y;
  const int tid = threadIdx.x;
  const int64_t b = p.token_seq[t];
  const int64_t t0 = p.qo_indptr[b], n = p.qo_indptr[b + 1] - t0, i = t - t0;
  const int64_t L = p.tables.kv_lens[b];
  const int64_t hk = hq / (p.q_heads / p.kv.kv_heads);
  const int64_t d = p.kv.head_dim;

  extern __shared__ float smem[];
  float* q_s = smem;                                    // [kMaxHeadDim]
  float* p_s = q_s + kMaxHeadDim;                       // [kThreads] probabilities of the tile
  float* red = p_s + kThreads;                          // [kThreads / 32] reduction scratch
  int64_t* off_s = reinterpret_cast<int64_t*>(red + kThreads / 32);  // [kThreads] element offsets
  int32_t* vis = reinterpret_cast<int32_t*>(off_s + kThreads);       // [max_new_tokens] visible nodes
  __shared__ int64_t num_visible;

  const float qscale = p.scale * 1.4426950408889634f;  // the softmax runs in base 2
  for (int64_t c = tid; c < d; c += kThreads) q_s[c] = load_f(p.q[(t * p.q_heads + hq) * d + c]) * qscale;
  if (p.mask != nullptr) {
    if (tid == 0) {
      const uint8_t* row = p.mask + p.mask_indptr[b] + i * n;
      int64_t count = 0;
      for (int64_t j = 0; j < n; ++j)
        if (row[j]) vis[count++] = int32_t(j);
      num_visible = count;
    }
  } else if (tid == 0) {
    num_visible = i + 1;
  }
  __syncthreads();
  const int64_t num_keys = L + num_visible;

  float m = -FLT_MAX, l = 0.f;
  float acc[kDimsPerThread] = {};
  for (int64_t x0 = 0; x0 < num_keys; x0 += kThreads) {
    const int64_t x = x0 + tid;
    float s = -INFINITY;
    if (x < num_keys) {
      const int64_t slot = x < L || p.mask == nullptr ? x : L + vis[x - L];
      const int64_t off = p.tables.offset(p.kv, b, slot, hk);
      off_s[tid] = off;
      s = 0.f;
      for (int64_t c = 0; c < d; ++c) s += q_s[c] * load_f(p.k_cache[off + c]);
    }
    const float m_new = fmaxf(m, block_reduce(s, MaxOp{}, red));
    const float pr = x < num_keys ? exp2f(s - m_new) : 0.f;
    p_s[tid] = pr;
    const float tile_sum = block_reduce(pr, SumOp{}, red);  // also orders p_s/off_s writes before reads
    const float alpha = exp2f(m - m_new);
    l = l * alpha + tile_sum;
    m = m_new;
    const int count = num_keys - x0 < kThreads ? int(num_keys - x0) : kThreads;
#pragma unroll
    for (int k = 0; k < kDimsPerThread; ++k) {
      const int64_t c = tid + int64_t(k) * kThreads;
      if (c >= d) break;
      float a = acc[k] * alpha;
      for (int j = 0; j < count; ++j) a += p_s[j] * load_f(p.v_cache[off_s[j] + c]);
      acc[k] = a;
    }
    __syncthreads();  // p_s and off_s are rewritten by the next tile
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int k = 0; k < kDimsPerThread; ++k) {
    const int64_t c = tid + int64_t(k) * kThreads;
    if (c < d) p.out[(t * p.q_heads + hq) * d + c] = store_f<T>(acc[k] * inv);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_tree_attention(const TreeAttentionParams<T>& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  const size_t shared = (kMaxHeadDim + kThreads + kThreads / 32) * sizeof(float) + kThreads * sizeof(int64_t) +
                        (p.mask != nullptr ? p.max_new_tokens : 0) * sizeof(int32_t);
  if (shared > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(tree_attention_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(unsigned(p.num_tokens), unsigned(p.q_heads));
  tree_attention_kernel<T><<<grid, kThreads, shared, stream>>>(p);
  return cudaGetLastError();
}

#define PYSPEC_INSTANTIATE(T) \
  template cudaError_t launch_tree_attention<T>(const TreeAttentionParams<T>&, cudaStream_t);
PYSPEC_FOR_EACH_CUDA_DTYPE(PYSPEC_INSTANTIATE)
#undef PYSPEC_INSTANTIATE

}  // namespace pyspec::cuda
