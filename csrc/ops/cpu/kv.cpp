// CPU wrappers of the paged-KV ops and rotary embedding: validate, then run csrc/kernels/paged_kv.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../../kernels/paged_kv.h"
#include "../attention_plan.h"
#include "../checks.h"
#include "../kv_checks.h"
#include "dispatch.h"

namespace pyspec {
namespace {

void paged_kv_append_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& qo_indptr, const at::Tensor& page_table, const at::Tensor& kv_lens) {
  const PagedKV kv = check_kv_cache(k_cache, v_cache, false);
  check_rows(k, k_cache, "k", kv.kv_heads, kv.head_dim);
  check_rows(v, k_cache, "v", kv.kv_heads, kv.head_dim);
  TORCH_CHECK(v.size(0) == k.size(0), "pyspec: v has ", v.size(0), " tokens but k has ", k.size(0));
  const HostTables h = check_tables(kv, k_cache, qo_indptr, page_table, kv_lens, k.size(0));
  const auto seq = token_to_seq(h.qo_indptr);
  const PageTables pt = h.tables();
  dispatch_cpu_dtype(k_cache.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, k.size(0), 16, [&](int64_t b, int64_t e) {
      cpu::paged_kv_append<T>(kv, pt, h.qo_indptr.data_ptr<int32_t>(), seq.data(), ptr<T>(k), ptr<T>(v),
                              ptr<T>(k_cache), ptr<T>(v_cache), b, e);
    });
  });
}

void kv_compact_cpu(at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& kv_lens, const at::Tensor& page_table,
                    const at::Tensor& accept_indptr, const at::Tensor& accept_nodes) {
  const PagedKV kv = check_kv_cache(k_cache, v_cache, true);
  const CompactMeta meta = check_compact(kv, k_cache, kv_lens, page_table, accept_indptr, accept_nodes);
  const PageTables pt = meta.tables.tables();
  dispatch_cpu_dtype(k_cache.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, kv.num_layers * pt.batch_size, 1, [&](int64_t b, int64_t e) {
      cpu::kv_compact<T>(kv, pt, meta.accept_indptr.data_ptr<int32_t>(), meta.accept_nodes.data_ptr<int32_t>(),
                         ptr<T>(k_cache), ptr<T>(v_cache), b, e);
    });
  });
  kv_lens.add_(meta.accept_indptr.diff().to(kv_lens.dtype()));
}

void copy_pages_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_pages,
                    const at::Tensor& dst_pages) {
  const PagedKV kv = check_kv_cache(k_cache, v_cache, true);
  const auto pages = check_copy_pages(kv, k_cache, src_pages, dst_pages);
  const int64_t n = src_pages.size(0);
  dispatch_cpu_dtype(k_cache.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, kv.num_layers * n, 1, [&](int64_t b, int64_t e) {
      cpu::copy_pages<T>(kv, n, pages.first.data_ptr<int32_t>(), pages.second.data_ptr<int32_t>(),
                         ptr<T>(k_cache), ptr<T>(v_cache), b, e);
    });
  });
}

at::Tensor rotary_embedding_cpu(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq) {
  check_rotary(x, positions, inv_freq);
  at::Tensor out = at::empty_like(x);
  const int64_t heads = x.size(1), head_dim = x.size(2);
  dispatch_cpu_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, x.size(0), 8, [&](int64_t b, int64_t e) {
      cpu::rotary_embedding<T>(ptr<T>(x), positions.data_ptr<int64_t>(), inv_freq.data_ptr<float>(), ptr<T>(out),
                               heads, head_dim, b, e);
    });
  });
  return out;
}

at::Tensor rope_kv_append_cpu(const at::Tensor& qkv, at::Tensor& k_cache, at::Tensor& v_cache,
                              const at::Tensor& positions, const at::Tensor& inv_freq,
                              int64_t handle) {
  const auto plan = find_plan(handle);
  plan->check_pool(k_cache, v_cache, "rope_kv_append");
  const PagedKV& kv = plan->kv;
  const int64_t T = plan->num_tokens, H = plan->q_heads, d = kv.head_dim;
  check_same_device(k_cache, qkv, "qkv");
  TORCH_CHECK(qkv.scalar_type() == k_cache.scalar_type(), "pyspec: qkv dtype ", qkv.scalar_type(),
              " must match the KV cache dtype ", k_cache.scalar_type());
  TORCH_CHECK(qkv.dim() == 2 && qkv.size(0) == T && qkv.size(1) == (H + 2 * kv.kv_heads) * d,
              "pyspec: qkv must be [num_tokens = ", T, ", (q_heads + 2 kv_heads) * head_dim = ",
              (H + 2 * kv.kv_heads) * d, "], got ", shape_str(qkv));
  TORCH_CHECK(qkv.is_contiguous(), "pyspec: qkv must be contiguous");
  check_rotary(qkv.view({T, H + 2 * kv.kv_heads, d}), positions, inv_freq);
  at::Tensor q = at::empty({T, H, d}, qkv.options());
  const PageTables pt = plan->host.tables();
  dispatch_cpu_dtype(k_cache.scalar_type(), [&](auto tag) {
    using T_ = decltype(tag);
    at::parallel_for(0, T, 8, [&](int64_t b, int64_t e) {
      cpu::rope_kv_append<T_>(kv, pt, plan->host.qo_indptr.data_ptr<int32_t>(), plan->token_seq.data(), ptr<T_>(qkv),
                              positions.data_ptr<int64_t>(), inv_freq.data_ptr<float>(), H, ptr<T_>(q),
                              ptr<T_>(k_cache), ptr<T_>(v_cache), b, e);
    });
  });
  return q;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CPU, m) {
  m.impl("rope_kv_append", &rope_kv_append_cpu);
  m.impl("paged_kv_append", &paged_kv_append_cpu);
  m.impl("kv_compact", &kv_compact_cpu);
  m.impl("copy_pages", &copy_pages_cpu);
  m.impl("rotary_embedding", &rotary_embedding_cpu);
}

}  // namespace pyspec
