// tree_attention_plan: validates a batch's attention metadata once and lists the CPU work items
// (csrc/ops/attention_plan.h). One implementation for every device: the checks read host copies.
#include "attention_plan.h"

#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <random>
#include <tuple>
#include <unordered_map>

namespace pyspec {

namespace {

std::mutex registry_mutex;
std::unordered_map<int64_t, std::shared_ptr<const AttentionPlan>>& registry() {
  static auto* plans = new std::unordered_map<int64_t, std::shared_ptr<const AttentionPlan>>();
  return *plans;
}

int64_t register_plan(std::shared_ptr<const AttentionPlan> plan) {
  static std::mt19937_64 rng{std::random_device{}()};
  const std::lock_guard<std::mutex> lock(registry_mutex);
  int64_t handle;
  do handle = int64_t(rng() >> 1);
  while (handle == 0 || registry().count(handle));
  registry().emplace(handle, std::move(plan));
  return handle;
}

}  // namespace

std::shared_ptr<const AttentionPlan> find_plan(int64_t handle) {
  const std::lock_guard<std::mutex> lock(registry_mutex);
  const auto it = registry().find(handle);
  TORCH_CHECK(it != registry().end(), "pyspec: attention plan ", handle,
              " is unknown or was released (make one with pyspec.ops.plan_tree_attention)");
  return it->second;
}

std::shared_ptr<AttentionPlan> make_attention_plan(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                      const at::Tensor& qo_indptr, const at::Tensor& page_table,
                                                      const at::Tensor& kv_lens,
                                                      const std::optional<at::Tensor>& tree_mask, int64_t q_heads,
                                                   std::optional<int64_t> num_tokens_arg) {
  TORCH_CHECK(!k_cache.is_meta(), "pyspec: tree_attention_plan needs real tensors, got a meta k_cache");
  PagedKV kv = check_kv_cache(k_cache, v_cache, true);
  kv.num_layers = 1;
  TORCH_CHECK(kv.head_dim <= kMaxHeadDim, "pyspec: head_dim must be <= ", kMaxHeadDim, ", got ", kv.head_dim);
  TORCH_CHECK(q_heads > 0 && q_heads % kv.kv_heads == 0, "pyspec: query heads (", q_heads,
              ") must be a positive multiple of KV heads (", kv.kv_heads, ")");
  int64_t num_tokens = 0;
  if (num_tokens_arg.has_value()) {
    num_tokens = *num_tokens_arg;
  } else {
    check_index_tensor(qo_indptr, "qo_indptr", 1);
    check_same_device(k_cache, qo_indptr, "qo_indptr");
    TORCH_CHECK(qo_indptr.size(0) >= 1, "pyspec: qo_indptr must have batch_size + 1 >= 1 entries");
    num_tokens = host_copy(qo_indptr).data_ptr<int32_t>()[qo_indptr.size(0) - 1];
    TORCH_CHECK(num_tokens >= 0, "pyspec: qo_indptr[-1] = ", num_tokens, " is negative");
  }

  auto plan = std::make_shared<AttentionPlan>();
  plan->kv = kv;
  plan->dtype = k_cache.scalar_type();
  plan->device = k_cache.device();
  plan->q_heads = q_heads;
  plan->num_tokens = num_tokens;
  plan->host = check_tables(kv, k_cache, qo_indptr, page_table, kv_lens, num_tokens);
  const bool on_cpu = k_cache.is_cpu();
  // Own copies: host_copy returns the caller's tensor itself when it is a contiguous CPU tensor.
  for (at::Tensor* t : {&plan->host.qo_indptr, &plan->host.page_table, &plan->host.kv_lens}) *t = t->clone();
  if (tree_mask.has_value()) {
    plan->mask_indptr = check_tree_mask(*tree_mask, k_cache, plan->host.qo_indptr);
    plan->host_mask = host_copy(*tree_mask).clone();
  }
  plan->qo_indptr = on_cpu ? plan->host.qo_indptr : qo_indptr.contiguous().clone();
  plan->page_table = on_cpu ? plan->host.page_table : page_table.contiguous().clone();
  plan->kv_lens = on_cpu ? plan->host.kv_lens : kv_lens.contiguous().clone();
  if (tree_mask.has_value()) plan->tree_mask = on_cpu ? plan->host_mask : tree_mask->contiguous().clone();
  plan->token_seq = token_to_seq(plan->host.qo_indptr);
  const int32_t* ind = plan->host.qo_indptr.data_ptr<int32_t>();
  for (int64_t b = 0; b < plan->batch_size(); ++b)
    plan->max_new_tokens = std::max<int64_t>(plan->max_new_tokens, ind[b + 1] - ind[b]);

  cpu::TreeAttentionParams<float> p{kv,
                                    plan->host.tables(),
                                    ind,
                                    plan->host_mask.defined() ? reinterpret_cast<const uint8_t*>(plan->host_mask.data_ptr()) : nullptr,
                                    plan->host_mask.defined() ? plan->mask_indptr.data() : nullptr,
                                    nullptr,
                                    nullptr,
                                    nullptr,
                                    nullptr,
                                    q_heads,
                                    1.f};
  plan->items = cpu::plan_tree_attention(p, plan->layout);
  return plan;
}

namespace {

int64_t tree_attention_plan(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& qo_indptr,
                            const at::Tensor& page_table, const at::Tensor& kv_lens,
                            const std::optional<at::Tensor>& tree_mask, int64_t q_heads) {
  return register_plan(make_attention_plan(k_cache, v_cache, qo_indptr, page_table, kv_lens, tree_mask, q_heads));
}

void tree_attention_release(int64_t handle) {
  const std::lock_guard<std::mutex> lock(registry_mutex);
  registry().erase(handle);  // releasing twice is harmless
}

std::tuple<int64_t, int64_t> tree_attention_plan_shape(int64_t handle) {
  const auto plan = find_plan(handle);
  return {plan->num_tokens, plan->q_heads};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> tree_attention_plan_metadata(int64_t handle) {
  const auto plan = find_plan(handle);
  std::optional<at::Tensor> mask;
  if (plan->tree_mask.defined()) mask = plan->tree_mask.clone();
  return {plan->qo_indptr.clone(), plan->page_table.clone(), plan->kv_lens.clone(), mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CompositeExplicitAutograd, m) { m.impl("tree_attention_plan", &tree_attention_plan); }

TORCH_LIBRARY_FRAGMENT(pyspec, m) {
  // A plan's lifetime ends when Python drops its handle (pyspec.ops.AttentionPlan); its size and metadata.
  m.def("tree_attention_release(int plan) -> ()", &tree_attention_release);
  m.def("tree_attention_plan_shape(int plan) -> (int, int)", &tree_attention_plan_shape);
  m.def("tree_attention_plan_metadata(int plan) -> (Tensor, Tensor, Tensor, Tensor?)", &tree_attention_plan_metadata);
}

}  // namespace pyspec
