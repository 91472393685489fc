// Host-side launchers of the CUDA kernels (csrc/kernels/*.cu), torch-free. Each is instantiated for
// float, __nv_bfloat16 and __half in its .cu file and returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include "common.h"

namespace pyspec::cuda {

// Maximum new tokens of one sequence when a tree mask is given (the visible list lives in shared memory).
constexpr int64_t kMaxTreeTokens = 8192;

template <typename T>
struct TreeAttentionParams {
  PagedKV kv;
  PageTables tables;           // device pointers
  const int32_t* qo_indptr;    // [batch_size + 1] CSR offsets of new tokens
  const int32_t* token_seq;    // [num_tokens] sequence of each new token
  const uint8_t* mask;         // packed [sum_b n_b * n_b] row-major per sequence; null = causal
  const int64_t* mask_indptr;  // [batch_size + 1] offsets into mask; null when mask is null
  const T* q;                  // [num_tokens, q_heads, head_dim]
  const T* k_cache;            // [num_pages, page_size, kv_heads, head_dim]
  const T* v_cache;
  T* out;                      // [num_tokens, q_heads, head_dim]
  int64_t num_tokens, q_heads;
  int64_t max_new_tokens;      // largest n_b, sizes the shared visible list
  float scale;
};

template <typename T>
cudaError_t launch_tree_attention(const TreeAttentionParams<T>& p, cudaStream_t stream);

template <typename T>
cudaError_t launch_paged_kv_append(const PagedKV& kv, const PageTables& tables, const int32_t* qo_indptr,
                                   const int32_t* token_seq, int64_t num_tokens, const T* k_new, const T* v_new,
                                   T* k_cache, T* v_cache, cudaStream_t stream);

template <typename T>
cudaError_t launch_kv_compact(const PagedKV& kv, const PageTables& tables, const int32_t* accept_indptr,
                              const int32_t* accept_nodes, T* k_cache, T* v_cache, cudaStream_t stream);

template <typename T>
cudaError_t launch_copy_pages(const PagedKV& kv, int64_t num_pairs, const int32_t* src_pages,
                              const int32_t* dst_pages, T* k_cache, T* v_cache, cudaStream_t stream);

template <typename T>
cudaError_t launch_rotary_embedding(const T* x, const int64_t* positions, const float* inv_freq, T* out,
                                    int64_t num_tokens, int64_t heads, int64_t head_dim, cudaStream_t stream);

// y [M, N] = x [M, K] @ weight [N, K]^T + bias [N] (bias may be null); each output in a fixed order.
template <typename T>
cudaError_t launch_linear(const T* x, const T* weight, const T* bias, T* y, int64_t M, int64_t N, int64_t K,
                          cudaStream_t stream);

}  // namespace pyspec::cuda
