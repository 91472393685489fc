// CUDA wrappers of the paged-KV ops and rotary embedding: validate (on host copies of the metadata),
// then launch the torch-free kernels of csrc/kernels/paged_kv.cu on the current stream.
#include <torch/library.h>

#include "../../kernels/cuda_kernels.h"
#include "../checks.h"
#include "../kv_checks.h"
#include "dispatch.cuh"

namespace pyspec {
namespace {

void paged_kv_append_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& qo_indptr, const at::Tensor& page_table, const at::Tensor& kv_lens) {
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const PagedKV kv = check_kv_cache(k_cache, v_cache, false);
  check_rows(k, k_cache, "k", kv.kv_heads, kv.head_dim);
  check_rows(v, k_cache, "v", kv.kv_heads, kv.head_dim);
  TORCH_CHECK(v.size(0) == k.size(0), "pyspec: v has ", v.size(0), " tokens but k has ", k.size(0));
  const HostTables h = check_tables(kv, k_cache, qo_indptr, page_table, kv_lens, k.size(0));
  const at::Tensor token_seq = to_device(at::tensor(token_to_seq(h.qo_indptr), at::kInt), k_cache);
  const at::Tensor pt = page_table.contiguous(), lens = kv_lens.contiguous(), indptr = qo_indptr.contiguous();
  dispatch_cuda_dtype(k_cache.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(cuda::launch_paged_kv_append<T>(kv, device_tables(pt, lens), indptr.data_ptr<int32_t>(),
                                                 token_seq.data_ptr<int32_t>(), k.size(0), cuda_ptr<T>(k),
                                                 cuda_ptr<T>(v), cuda_ptr<T>(k_cache), cuda_ptr<T>(v_cache),
                                                 at::cuda::getCurrentCUDAStream()),
                 "paged_kv_append");
  });
}

void kv_compact_cuda(at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& kv_lens, const at::Tensor& page_table,
                     const at::Tensor& accept_indptr, const at::Tensor& accept_nodes) {
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const PagedKV kv = check_kv_cache(k_cache, v_cache, true);
  const CompactMeta meta = check_compact(kv, k_cache, kv_lens, page_table, accept_indptr, accept_nodes);
  const at::Tensor pt = page_table.contiguous(), indptr = accept_indptr.contiguous(),
                   nodes = accept_nodes.contiguous();
  dispatch_cuda_dtype(k_cache.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(cuda::launch_kv_compact<T>(kv, device_tables(pt, kv_lens), indptr.data_ptr<int32_t>(),
                                            nodes.data_ptr<int32_t>(), cuda_ptr<T>(k_cache), cuda_ptr<T>(v_cache),
                                            at::cuda::getCurrentCUDAStream()),
                 "kv_compact");
  });
  kv_lens.add_(indptr.diff());  // stream-ordered after the kernel, which reads the old lengths
}

void copy_pages_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_pages,
                     const at::Tensor& dst_pages) {
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const PagedKV kv = check_kv_cache(k_cache, v_cache, true);
  check_copy_pages(kv, k_cache, src_pages, dst_pages);
  const at::Tensor src = src_pages.contiguous(), dst = dst_pages.contiguous();
  dispatch_cuda_dtype(k_cache.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(cuda::launch_copy_pages<T>(kv, src.size(0), src.data_ptr<int32_t>(), dst.data_ptr<int32_t>(),
                                            cuda_ptr<T>(k_cache), cuda_ptr<T>(v_cache),
                                            at::cuda::getCurrentCUDAStream()),
                 "copy_pages");
  });
}

at::Tensor rotary_embedding_cuda(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq) {
  const c10::cuda::CUDAGuard guard(x.device());
  check_rotary(x, positions, inv_freq);
  at::Tensor out = at::empty_like(x);
  dispatch_cuda_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(cuda::launch_rotary_embedding<T>(cuda_ptr<T>(x), positions.data_ptr<int64_t>(),
                                                  inv_freq.data_ptr<float>(), cuda_ptr<T>(out), x.size(0),
                                                  x.size(1), x.size(2), at::cuda::getCurrentCUDAStream()),
                 "rotary_embedding");
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CUDA, m) {
  m.impl("paged_kv_append", &paged_kv_append_cuda);
  m.impl("kv_compact", &kv_compact_cuda);
  m.impl("copy_pages", &copy_pages_cuda);
  m.impl("rotary_embedding", &rotary_embedding_cuda);
}

}  // namespace pyspec
