// CUDA kernels of the paged KV cache and rotary embeddings, torch-free (nvcc builds this file alone).
// Semantics match the CPU templates in paged_kv.h. Napkin math: all four are pure copies (plus a few
// flops for rotary), bound by memory bandwidth; one block per token/page row keeps accesses coalesced.
#include "cuda_kernels.h"
#include "cuda_types.cuh"

namespace pyspec::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void paged_kv_append_kernel(PagedKV kv, PageTables tables, const int32_t* qo_indptr,
                                       const int32_t* token_seq, const T* k_new, const T* v_new, T* k_cache,
                                       T* v_cache) {
  const int64_t t = blockIdx.x, row = kv.slot_stride();
  const int64_t b = token_seq[t];
  const int64_t dst = tables.offset(kv, b, tables.kv_lens[b] + (t - qo_indptr[b]), 0);
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) {
    k_cache[dst + e] = k_new[t * row + e];
    v_cache[dst + e] = v_new[t * row + e];
  }
}

// One block per (layer, sequence); each thread owns fixed elements of a slot row and walks the
// accepted nodes in order, so a destination is never written before its earlier use as a source.
template <typename T>
__global__ void kv_compact_kernel(PagedKV kv, PageTables tables, const int32_t* accept_indptr,
                                  const int32_t* accept_nodes, T* k_cache, T* v_cache) {
  const int64_t layer = blockIdx.x / tables.batch_size, b = blockIdx.x % tables.batch_size;
  const int64_t row = kv.slot_stride(), base = tables.kv_lens[b];
  T* k = k_cache + layer * kv.layer_stride();
  T* v = v_cache + layer * kv.layer_stride();
  for (int64_t i = accept_indptr[b]; i < accept_indptr[b + 1]; ++i) {
    const int64_t dst_slot = base + (i - accept_indptr[b]), src_slot = base + accept_nodes[i];
    if (dst_slot == src_slot) continue;
    const int64_t dst = tables.offset(kv, b, dst_slot, 0), src = tables.offset(kv, b, src_slot, 0);
    for (int64_t e = threadIdx.x; e < row; e += blockDim.x) {
      k[dst + e] = k[src + e];
      v[dst + e] = v[src + e];
    }
  }
}

template <typename T>
__global__ void copy_pages_kernel(PagedKV kv, int64_t num_pairs, const int32_t* src_pages,
                                  const int32_t* dst_pages, T* k_cache, T* v_cache) {
  const int64_t layer = blockIdx.x / num_pairs, i = blockIdx.x % num_pairs;
  const int64_t page = kv.page_stride(), base = layer * kv.layer_stride();
  const int64_t src = base + src_pages[i] * page, dst = base + dst_pages[i] * page;
  for (int64_t e = threadIdx.x; e < page; e += blockDim.x) {
    k_cache[dst + e] = k_cache[src + e];
    v_cache[dst + e] = v_cache[src + e];
  }
}

template <typename T>
__global__ void rotary_embedding_kernel(const T* x, const int64_t* positions, const float* inv_freq, T* out,
                                        int64_t heads, int64_t head_dim) {
  const int64_t t = blockIdx.x, half = head_dim / 2;
  const float pos = static_cast<float>(positions[t]);
  for (int64_t e = threadIdx.x; e < heads * half; e += blockDim.x) {
    const int64_t h = e / half, i = e % half;
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    const int64_t base = (t * heads + h) * head_dim;
    const float x1 = load_f(x[base + i]), x2 = load_f(x[base + i + half]);
    out[base + i] = store_f<T>(x1 * c - x2 * s);
    out[base + i + half] = store_f<T>(x2 * c + x1 * s);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_paged_kv_append(const PagedKV& kv, const PageTables& tables, const int32_t* qo_indptr,
                                   const int32_t* token_seq, int64_t num_tokens, const T* k_new, const T* v_new,
                                   T* k_cache, T* v_cache, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  paged_kv_append_kernel<T><<<unsigned(num_tokens), kThreads, 0, stream>>>(kv, tables, qo_indptr, token_seq, k_new,
                                                                           v_new, k_cache, v_cache);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_kv_compact(const PagedKV& kv, const PageTables& tables, const int32_t* accept_indptr,
                              const int32_t* accept_nodes, T* k_cache, T* v_cache, cudaStream_t stream) {
  const int64_t blocks = kv.num_layers * tables.batch_size;
  if (blocks == 0) return cudaSuccess;
  kv_compact_kernel<T><<<unsigned(blocks), kThreads, 0, stream>>>(kv, tables, accept_indptr, accept_nodes, k_cache,
                                                                  v_cache);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_copy_pages(const PagedKV& kv, int64_t num_pairs, const int32_t* src_pages,
                              const int32_t* dst_pages, T* k_cache, T* v_cache, cudaStream_t stream) {
  const int64_t blocks = kv.num_layers * num_pairs;
  if (blocks == 0) return cudaSuccess;
  copy_pages_kernel<T><<<unsigned(blocks), kThreads, 0, stream>>>(kv, num_pairs, src_pages, dst_pages, k_cache,
                                                                  v_cache);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_rotary_embedding(const T* x, const int64_t* positions, const float* inv_freq, T* out,
                                    int64_t num_tokens, int64_t heads, int64_t head_dim, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  rotary_embedding_kernel<T><<<unsigned(num_tokens), kThreads, 0, stream>>>(x, positions, inv_freq, out, heads,
                                                                           head_dim);
  return cudaGetLastError();
}

#define PYSPEC_INSTANTIATE(T)                                                                                    \
  template cudaError_t launch_paged_kv_append<T>(const PagedKV&, const PageTables&, const int32_t*,              \
                                                 const int32_t*, int64_t, const T*, const T*, T*, T*,            \
                                                 cudaStream_t);                                                  \
  template cudaError_t launch_kv_compact<T>(const PagedKV&, const PageTables&, const int32_t*, const int32_t*, T*, \
                                            T*, cudaStream_t);                                                   \
  template cudaError_t launch_copy_pages<T>(const PagedKV&, int64_t, const int32_t*, const int32_t*, T*, T*,     \
                                            cudaStream_t);                                                       \
  template cudaError_t launch_rotary_embedding<T>(const T*, const int64_t*, const float*, T*, int64_t, int64_t,  \
                                                  int64_t, cudaStream_t);
PYSPEC_FOR_EACH_CUDA_DTYPE(PYSPEC_INSTANTIATE)
#undef PYSPEC_INSTANTIATE

}  // namespace pyspec::cuda
