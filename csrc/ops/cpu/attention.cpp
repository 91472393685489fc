// CPU wrapper of tree attention: validate, plan the work items, run them in parallel, merge chunks.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>

#include "../../kernels/tree_attention.h"
#include "../checks.h"
#include "dispatch.h"

namespace pyspec {
namespace {

at::Tensor tree_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& qo_indptr, const at::Tensor& page_table, const at::Tensor& kv_lens,
                              const std::optional<at::Tensor>& tree_mask, double scale) {
  const PagedKV kv = check_kv_cache(k_cache, v_cache, false);
  TORCH_CHECK(kv.head_dim <= kMaxHeadDim, "pyspec: head_dim must be <= ", kMaxHeadDim, ", got ", kv.head_dim);
  check_rows(q, k_cache, "q", -1, kv.head_dim);
  TORCH_CHECK(q.size(1) % kv.kv_heads == 0, "pyspec: query heads (", q.size(1),
              ") must be a multiple of KV heads (", kv.kv_heads, ")");
  TORCH_CHECK(std::isfinite(scale), "pyspec: scale must be finite, got ", scale);
  const HostTables h = check_tables(kv, k_cache, qo_indptr, page_table, kv_lens, q.size(0));
  std::vector<int64_t> mask_indptr;
  at::Tensor mask;
  if (tree_mask.has_value()) {
    mask_indptr = check_tree_mask(*tree_mask, k_cache, h.qo_indptr);
    mask = tree_mask->contiguous();
  }
  at::Tensor out = at::empty_like(q);
  if (q.size(0) == 0) return out;
  dispatch_cpu_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::TreeAttentionParams<T> p{kv,
                                  h.tables(),
                                  h.qo_indptr.data_ptr<int32_t>(),
                                  mask.defined() ? reinterpret_cast<const uint8_t*>(mask.data_ptr()) : nullptr,
                                  mask.defined() ? mask_indptr.data() : nullptr,
                                  ptr<T>(q),
                                  ptr<T>(k_cache),
                                  ptr<T>(v_cache),
                                  ptr<T>(out),
                                  q.size(1),
                                  float(scale)};
    cpu::Partials part;
    const auto items = cpu::plan_tree_attention(p, part);
    // Items differ in cost (last chunks, tree tails): threads take them one at a time.
    std::atomic<int64_t> next{0};
    const int64_t num_items = int64_t(items.size());
    at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), num_items), 1, [&](int64_t, int64_t) {
      for (int64_t i = next++; i < num_items; i = next++) cpu::run_attention_item(p, items[i], part);
    });
    at::parallel_for(0, q.size(0), 4, [&](int64_t b, int64_t e) {
      cpu::merge_attention_chunks(p, part, b, e);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }

}  // namespace pyspec
