// Argument checks shared by the CPU and CUDA wrappers. Everything a caller can get wrong (shape, dtype,
// device, index range, inconsistent metadata) is a TORCH_CHECK naming the argument and what was
// expected, so bad input is a Python RuntimeError, never a crash or a silent overwrite.
// Value checks read the small metadata tensors on the host (one copy when they live on a GPU).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "../kernels/common.h"

namespace pyspec {

inline std::string shape_str(const at::Tensor& t) { return std::string(c10::str(t.sizes())); }

inline void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "pyspec: ", name, " must be on ", ref.device(),
              " like the KV cache, got ", t.device());
}

inline void check_index_tensor(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kInt, "pyspec: ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "pyspec: ", name, " must have ", dim, " dimension(s), got shape ",
              shape_str(t));
}

inline void check_kv_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kBFloat16 || (dt == at::kHalf && t.is_cuda());
  TORCH_CHECK(ok, "pyspec: ", name, " must be float32 or bfloat16 (or float16 on CUDA), got ", dt,
              " on ", t.device());
}

// K and V pools: [num_pages, page_size, kv_heads, head_dim] (or with a leading layer dim when
// `allow_layers`), identical shapes and dtypes, contiguous.
inline PagedKV check_kv_cache(const at::Tensor& k, const at::Tensor& v, bool allow_layers) {
  TORCH_CHECK(k.dim() == 4 || (allow_layers && k.dim() == 5), "pyspec: k_cache must be [num_pages, page_size, kv_heads, head_dim]",
              allow_layers ? " or [num_layers, num_pages, page_size, kv_heads, head_dim]" : "",
              ", got shape ", shape_str(k));
  TORCH_CHECK(v.sizes() == k.sizes(), "pyspec: v_cache must have the shape of k_cache ",
              shape_str(k), ", got ", shape_str(v));
  TORCH_CHECK(v.scalar_type() == k.scalar_type(), "pyspec: v_cache dtype ", v.scalar_type(),
              " differs from k_cache dtype ", k.scalar_type());
  check_same_device(k, v, "v_cache");
  check_kv_dtype(k, "k_cache");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "pyspec: k_cache and v_cache must be contiguous");
  const int64_t o = k.dim() - 4;
  PagedKV kv{o ? k.size(0) : 1, k.size(o), k.size(o + 1), k.size(o + 2), k.size(o + 3)};
  TORCH_CHECK(kv.page_size > 0 && kv.kv_heads > 0 && kv.head_dim > 0,
              "pyspec: k_cache has an empty page, head or head_dim dimension: ", shape_str(k));
  return kv;
}

// Host copies of the per-sequence metadata, validated against each other.
struct HostTables {
  at::Tensor qo_indptr, page_table, kv_lens;  // CPU int32, contiguous
  PageTables tables() const {
    return {kv_lens.size(0), page_table.size(1), page_table.data_ptr<int32_t>(), kv_lens.data_ptr<int32_t>()};
  }
};

inline at::Tensor host_copy(const at::Tensor& t) { return t.to(at::kCPU).contiguous(); }

// Checks that page_table row b covers slots [0, end) with valid pages.
inline void check_pages_cover(const PagedKV& kv, const PageTables& pt, int64_t b, int64_t end, const char* what) {
  const int64_t pages = (end + kv.page_size - 1) / kv.page_size;
  TORCH_CHECK(pages <= pt.max_pages, "pyspec: sequence ", b, " needs ", pages, " pages for ", end,
              " KV slots (", what, ") but page_table has ", pt.max_pages, " columns");
  for (int64_t i = 0; i < pages; ++i) {
    const int32_t page = pt.page_table[b * pt.max_pages + i];
    TORCH_CHECK(page >= 0 && page < kv.num_pages, "pyspec: page_table[", b, ", ", i, "] = ", page,
                " is out of range [0, ", kv.num_pages, ")");
  }
}

// qo_indptr [B+1] CSR offsets over num_tokens rows; page_table [B, P]; kv_lens [B]. Every sequence's
// pages must cover its committed length plus its new tokens.
inline HostTables check_tables(const PagedKV& kv, const at::Tensor& cache, const at::Tensor& qo_indptr,
                               const at::Tensor& page_table, const at::Tensor& kv_lens, int64_t num_tokens) {
  check_index_tensor(qo_indptr, "qo_indptr", 1);
  check_index_tensor(page_table, "page_table", 2);
  check_index_tensor(kv_lens, "kv_lens", 1);
  for (auto* t : {&qo_indptr, &page_table, &kv_lens}) check_same_device(cache, *t, "metadata");
  const int64_t B = kv_lens.size(0);
  TORCH_CHECK(qo_indptr.size(0) == B + 1, "pyspec: qo_indptr must have batch_size + 1 = ", B + 1,
              " entries (kv_lens has ", B, "), got ", qo_indptr.size(0));
  TORCH_CHECK(page_table.size(0) == B, "pyspec: page_table must have batch_size = ", B, " rows, got ",
              page_table.size(0));
  HostTables h{host_copy(qo_indptr), host_copy(page_table), host_copy(kv_lens)};
  const int32_t* ind = h.qo_indptr.data_ptr<int32_t>();
  TORCH_CHECK(ind[0] == 0, "pyspec: qo_indptr[0] must be 0, got ", ind[0]);
  TORCH_CHECK(ind[B] == num_tokens, "pyspec: qo_indptr[-1] = ", ind[B], " must equal the number of new tokens ",
              num_tokens);
  const PageTables pt = h.tables();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(ind[b + 1] >= ind[b], "pyspec: qo_indptr must be non-decreasing, but qo_indptr[", b + 1,
                "] = ", ind[b + 1], " < qo_indptr[", b, "] = ", ind[b]);
    TORCH_CHECK(pt.kv_lens[b] >= 0, "pyspec: kv_lens[", b, "] = ", pt.kv_lens[b], " is negative");
  }
  for (int64_t b = 0; b < B; ++b)
    check_pages_cover(kv, pt, b, int64_t(pt.kv_lens[b]) + ind[b + 1] - ind[b], "committed + new");
  return h;
}

// New-token rows [T, heads, head_dim] of the cache's dtype and device.
inline void check_rows(const at::Tensor& x, const at::Tensor& cache, const char* name, int64_t heads,
                       int64_t head_dim) {
  check_same_device(cache, x, name);
  TORCH_CHECK(x.scalar_type() == cache.scalar_type(), "pyspec: ", name, " dtype ", x.scalar_type(),
              " must match the KV cache dtype ", cache.scalar_type());
  TORCH_CHECK(x.dim() == 3 && (heads < 0 || x.size(1) == heads) && x.size(2) == head_dim, "pyspec: ", name,
              " must be [num_tokens, ", heads < 0 ? std::string("heads") : std::to_string(heads), ", ",
              head_dim, "], got ", shape_str(x));
  TORCH_CHECK(x.is_contiguous(), "pyspec: ", name, " must be contiguous");
}

// Token index -> sequence index, from CSR offsets.
inline std::vector<int32_t> token_to_seq(const at::Tensor& host_indptr) {
  const int32_t* ind = host_indptr.data_ptr<int32_t>();
  const int64_t B = host_indptr.size(0) - 1;
  std::vector<int32_t> seq(ind[B]);
  for (int64_t b = 0; b < B; ++b)
    for (int32_t t = ind[b]; t < ind[b + 1]; ++t) seq[t] = int32_t(b);
  return seq;
}

// Tree mask: bool, packed per sequence row-major, sum_b n_b^2 entries. Returns CSR offsets [B+1].
inline std::vector<int64_t> check_tree_mask(const at::Tensor& mask, const at::Tensor& cache,
                                            const at::Tensor& host_indptr) {
  check_same_device(cache, mask, "tree_mask");
  TORCH_CHECK(mask.scalar_type() == at::kBool, "pyspec: tree_mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(mask.dim() == 1 && mask.is_contiguous(),
              "pyspec: tree_mask must be 1-D contiguous (each sequence's [n, n] mask flattened and "
              "concatenated), got shape ", shape_str(mask));
  const int32_t* ind = host_indptr.data_ptr<int32_t>();
  const int64_t B = host_indptr.size(0) - 1;
  std::vector<int64_t> offsets(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = ind[b + 1] - ind[b];
    offsets[b + 1] = offsets[b] + n * n;
  }
  TORCH_CHECK(mask.numel() == offsets[B], "pyspec: tree_mask has ", mask.numel(),
              " entries but the batch's new tokens (qo_indptr) need sum(n_b^2) = ", offsets[B]);
  return offsets;
}

}  // namespace pyspec
