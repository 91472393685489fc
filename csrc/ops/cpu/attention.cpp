// CPU tree attention: run one layer over a plan's work items in parallel, then merge chunks.
// tree_attention (one call, no plan) plans and runs; a forward pass plans once and runs every layer.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>

#include "../../kernels/tree_attention.h"
#include "../attention_plan.h"
#include "../checks.h"
#include "dispatch.h"

namespace pyspec {
namespace {

at::Tensor run_planned(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const AttentionPlan* plan, double scale) {
  plan->check_pool(k_cache, v_cache, "tree_attention_run");
  check_rows(q, k_cache, "q", plan->q_heads, plan->kv.head_dim);
  TORCH_CHECK(q.size(0) == plan->num_tokens, "pyspec: q has ", q.size(0), " tokens but the plan has ",
              plan->num_tokens);
  TORCH_CHECK(std::isfinite(scale), "pyspec: scale must be finite, got ", scale);
  at::Tensor out = at::empty_like(q);
  if (q.size(0) == 0) return out;
  dispatch_cpu_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const cpu::TreeAttentionParams<T> p{
        plan->kv,
        plan->host.tables(),
        plan->host.qo_indptr.data_ptr<int32_t>(),
        plan->host_mask.defined() ? reinterpret_cast<const uint8_t*>(plan->host_mask.data_ptr()) : nullptr,
        plan->host_mask.defined() ? plan->mask_indptr.data() : nullptr,
        ptr<T>(q),
        ptr<T>(k_cache),
        ptr<T>(v_cache),
        ptr<T>(out),
        plan->q_heads,
        float(scale)};
    cpu::Partials part = plan->layout;
    part.allocate(plan->q_heads);
    const auto& items = plan->items;
    const int64_t num_items = int64_t(items.size());
    // Items differ in cost (last chunks, tree tails): threads take them one at a time.
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), num_items), 1, [&](int64_t, int64_t) {
      for (int64_t i = next++; i < num_items; i = next++) cpu::run_attention_item(p, items[i], part);
    });
    at::parallel_for(0, q.size(0), 4, [&](int64_t b, int64_t e) { cpu::merge_attention_chunks(p, part, b, e); });
  });
  return out;
}

at::Tensor tree_attention_run_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  int64_t plan, double scale) {
  return run_planned(q, k_cache, v_cache, find_plan(plan).get(), scale);
}

at::Tensor tree_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& qo_indptr, const at::Tensor& page_table, const at::Tensor& kv_lens,
                              const std::optional<at::Tensor>& tree_mask, double scale) {
  const PagedKV kv = check_kv_cache(k_cache, v_cache, false);  // one layer's pool only
  check_rows(q, k_cache, "q", -1, kv.head_dim);  // the plan checks the rest, against q's heads and rows
  const auto plan =
      make_attention_plan(k_cache, v_cache, qo_indptr, page_table, kv_lens, tree_mask, q.size(1), q.size(0));
  return run_planned(q, k_cache, v_cache, plan.get(), scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CPU, m) {
  m.impl("tree_attention", &tree_attention_cpu);
  m.impl("tree_attention_run", &tree_attention_run_cpu);
}

}  // namespace pyspec
