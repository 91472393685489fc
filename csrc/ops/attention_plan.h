// The attention plan of one forward pass (FlashInfer's plan/run split): the ragged metadata, page
// tables, lengths and tree masks of a batch, validated once, with the CPU work items listed once.
// Every layer's tree_attention_run and rope_kv_append take the plan and check only O(1) facts (the
// pool's shape, dtype and device; q's shape): no host copy, no page-table walk, no allocation of
// metadata per layer. The plan keeps its own copies, so a caller that changes its tensors afterwards
// cannot make a layer read a page the plan did not check.
//
// Python holds a plan by an int handle (a random 63-bit key of a registry here; passing a custom
// class object through the dispatcher cost ~10 us per call, more than a decoding layer's attention):
// an unknown or released handle is a clear error, never a dangling read.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <vector>

#include "../kernels/tree_attention.h"
#include "checks.h"

namespace pyspec {

struct AttentionPlan {
  PagedKV kv{};  // one layer's pool geometry (num_layers = 1)
  at::ScalarType dtype = at::kFloat;
  at::Device device{at::kCPU};
  int64_t q_heads = 0, num_tokens = 0, max_new_tokens = 0;
  // Validated copies on the cache's device; tree_mask undefined = causal.
  at::Tensor qo_indptr, page_table, kv_lens, tree_mask;
  // Host copies (the same tensors when the cache is on the CPU) and what the CPU kernels derive.
  HostTables host;
  at::Tensor host_mask;
  std::vector<int32_t> token_seq;      // [num_tokens] sequence of each new token
  std::vector<int64_t> mask_indptr;    // [batch_size + 1] offsets into the packed mask
  std::vector<cpu::AttentionItem> items;
  cpu::Partials layout;                // chunk_base and dp; buffers are allocated per run

  int64_t batch_size() const { return kv_lens.size(0); }

  // The pools a layer passes must be the geometry, dtype and device the plan was made for.
  void check_pool(const at::Tensor& k_cache, const at::Tensor& v_cache, const char* op) const {
    const PagedKV got = check_kv_cache(k_cache, v_cache, false);
    TORCH_CHECK(got.num_pages == kv.num_pages && got.page_size == kv.page_size && got.kv_heads == kv.kv_heads &&
                    got.head_dim == kv.head_dim,
                "pyspec: ", op, ": k_cache ", shape_str(k_cache), " is not the pool the plan was made for [",
                kv.num_pages, ", ", kv.page_size, ", ", kv.kv_heads, ", ", kv.head_dim, "]");
    TORCH_CHECK(k_cache.scalar_type() == dtype && k_cache.device() == device, "pyspec: ", op, ": k_cache is ",
                k_cache.scalar_type(), " on ", k_cache.device(), " but the plan was made for ", dtype, " on ", device);
  }
};

// num_tokens: the rows of the q that will run on the plan, checked against qo_indptr[-1] (default: read
// from qo_indptr).
std::shared_ptr<AttentionPlan> make_attention_plan(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                   const at::Tensor& qo_indptr, const at::Tensor& page_table,
                                                   const at::Tensor& kv_lens, const std::optional<at::Tensor>& tree_mask,
                                                   int64_t q_heads, std::optional<int64_t> num_tokens = std::nullopt);

// The plan registered under `handle` (tree_attention_plan's result); a clear error if there is none.
std::shared_ptr<const AttentionPlan> find_plan(int64_t handle);

}  // namespace pyspec
