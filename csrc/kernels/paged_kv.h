// CPU kernels for the paged KV cache and rotary embeddings, on raw pointers.
// Each function does a range [begin, end) of independent work items; the caller parallelises.
#pragma once

#include <cmath>

#include "common.h"

namespace pyspec::cpu {

// Writes K/V of new tokens [begin, end) of the ragged batch at their sequence's own length.
// token_seq: [T] sequence of each new token; k_new, v_new: [T, kv_heads, head_dim].
template <typename T>
void paged_kv_append(const PagedKV& kv, const PageTables& tables, const int32_t* qo_indptr,
                     const int32_t* token_seq, const T* k_new, const T* v_new, T* k_cache,
                     T* v_cache, int64_t begin, int64_t end) {
  const int64_t row = kv.slot_stride();
  for (int64_t t = begin; t < end; ++t) {
    const int64_t b = token_seq[t];
    const int64_t slot = tables.kv_lens[b] + (t - qo_indptr[b]);
    const int64_t dst = tables.offset(kv, b, slot, 0);
    memcpy(k_cache + dst, k_new + t * row, row * sizeof(T));
    memcpy(v_cache + dst, v_new + t * row, row * sizeof(T));
  }
}

// Moves each sequence's accepted nodes to the slots right after its committed prefix, for work items
// [begin, end) over (layer, sequence). Node j of sequence b lives at slot kv_lens[b] + j; accepted
// node indices are strictly increasing, so a forward copy never overwrites a source it still needs.
template <typename T>
void kv_compact(const PagedKV& kv, const PageTables& tables, const int32_t* accept_indptr,
                const int32_t* accept_nodes, T* k_cache, T* v_cache, int64_t begin, int64_t end) {
  const int64_t row = kv.slot_stride();
  for (int64_t item = begin; item < end; ++item) {
    const int64_t layer = item / tables.batch_size, b = item % tables.batch_size;
    T* k = k_cache + layer * kv.layer_stride();
    T* v = v_cache + layer * kv.layer_stride();
    const int64_t base = tables.kv_lens[b];
    for (int64_t i = accept_indptr[b]; i < accept_indptr[b + 1]; ++i) {
      const int64_t dst_slot = base + (i - accept_indptr[b]);
      const int64_t src_slot = base + accept_nodes[i];
      if (dst_slot == src_slot) continue;
      const int64_t dst = tables.offset(kv, b, dst_slot, 0), src = tables.offset(kv, b, src_slot, 0);
      memcpy(k + dst, k + src, row * sizeof(T));
      memcpy(v + dst, v + src, row * sizeof(T));
    }
  }
}

// Copies whole pages src_pages[i] -> dst_pages[i] in every layer, for items [begin, end) over
// (layer, pair).
template <typename T>
void copy_pages(const PagedKV& kv, int64_t num_pairs, const int32_t* src_pages,
                const int32_t* dst_pages, T* k_cache, T* v_cache, int64_t begin, int64_t end) {
  const int64_t page = kv.page_stride();
  for (int64_t item = begin; item < end; ++item) {
    const int64_t layer = item / num_pairs, i = item % num_pairs;
    const int64_t base = layer * kv.layer_stride();
    memcpy(k_cache + base + dst_pages[i] * page, k_cache + base + src_pages[i] * page, page * sizeof(T));
    memcpy(v_cache + base + dst_pages[i] * page, v_cache + base + src_pages[i] * page, page * sizeof(T));
  }
}

// Rotary embedding, Llama/Qwen2 ("rotate half") convention: with h = head_dim / 2 and
// angle_i = position * inv_freq[i],
//   out[i]     = x[i] cos(angle_i) - x[i + h] sin(angle_i)
//   out[i + h] = x[i + h] cos(angle_i) + x[i] sin(angle_i).
// rope_angles fills cos/sin of one position; rotate_head applies them to one head (out may not alias x).
inline void rope_angles(int64_t position, const float* inv_freq, int64_t half, float* cos_buf, float* sin_buf) {
  const float pos = static_cast<float>(position);
  for (int64_t i = 0; i < half; ++i) {
    const float angle = pos * inv_freq[i];
    cos_buf[i] = std::cos(angle);
    sin_buf[i] = std::sin(angle);
  }
}

template <typename T>
inline void rotate_head(const T* x, const float* cos_buf, const float* sin_buf, int64_t half, T* out) {
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
    out[i] = from_float<T>(x1 * cos_buf[i] - x2 * sin_buf[i]);
    out[i + half] = from_float<T>(x2 * cos_buf[i] + x1 * sin_buf[i]);
  }
}

// Rotary embedding of tokens [begin, end). x, out: [T, heads, head_dim]; positions: [T];
// inv_freq: [head_dim / 2].
template <typename T>
void rotary_embedding(const T* x, const int64_t* positions, const float* inv_freq, T* out,
                      int64_t heads, int64_t head_dim, int64_t begin, int64_t end) {
  const int64_t half = head_dim / 2;
  float cos_buf[kMaxHeadDim / 2], sin_buf[kMaxHeadDim / 2];
  for (int64_t t = begin; t < end; ++t) {
    rope_angles(positions[t], inv_freq, half, cos_buf, sin_buf);
    for (int64_t h = 0; h < heads; ++h)
      rotate_head(x + (t * heads + h) * head_dim, cos_buf, sin_buf, half, out + (t * heads + h) * head_dim);
  }
}

// The step after the fused q/k/v projection, for tokens [begin, end): qkv [T, (q_heads + 2 kv_heads)
// * head_dim] holds each token's q heads, then its k heads, then its v heads. Rotates q into q_out
// [T, q_heads, head_dim], and writes the rotated k and the v at the token's KV slot (as
// paged_kv_append does). Bitwise the same as rotary_embedding of q and k, then paged_kv_append.
template <typename T>
void rope_kv_append(const PagedKV& kv, const PageTables& tables, const int32_t* qo_indptr,
                    const int32_t* token_seq, const T* qkv, const int64_t* positions, const float* inv_freq,
                    int64_t q_heads, T* q_out, T* k_cache, T* v_cache, int64_t begin, int64_t end) {
  const int64_t d = kv.head_dim, half = d / 2;
  const int64_t width = (q_heads + 2 * kv.kv_heads) * d;
  float cos_buf[kMaxHeadDim / 2], sin_buf[kMaxHeadDim / 2];
  for (int64_t t = begin; t < end; ++t) {
    rope_angles(positions[t], inv_freq, half, cos_buf, sin_buf);
    const T* row = qkv + t * width;
    for (int64_t h = 0; h < q_heads; ++h)
      rotate_head(row + h * d, cos_buf, sin_buf, half, q_out + (t * q_heads + h) * d);
    const int64_t b = token_seq[t];
    const int64_t dst = tables.offset(kv, b, tables.kv_lens[b] + (t - qo_indptr[b]), 0);
    const T* k = row + q_heads * d;
    for (int64_t h = 0; h < kv.kv_heads; ++h) rotate_head(k + h * d, cos_buf, sin_buf, half, k_cache + dst + h * d);
    memcpy(v_cache + dst, k + kv.kv_heads * d, kv.kv_heads * d * sizeof(T));
  }
}

}  // namespace pyspec::cpu
