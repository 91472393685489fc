// CUDA wrapper of tree attention: validate (on host copies of the metadata), then launch the
// torch-free kernel of csrc/kernels/tree_attention.cu on the current stream.
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../../kernels/cuda_kernels.h"
#include "../checks.h"
#include "dispatch.cuh"

namespace pyspec {
namespace {

at::Tensor tree_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& qo_indptr, const at::Tensor& page_table, const at::Tensor& kv_lens,
                               const std::optional<at::Tensor>& tree_mask, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  const PagedKV kv = check_kv_cache(k_cache, v_cache, false);
  TORCH_CHECK(kv.head_dim <= kMaxHeadDim, "pyspec: head_dim must be <= ", kMaxHeadDim, ", got ", kv.head_dim);
  check_rows(q, k_cache, "q", -1, kv.head_dim);
  TORCH_CHECK(q.size(1) % kv.kv_heads == 0, "pyspec: query heads (", q.size(1),
              ") must be a multiple of KV heads (", kv.kv_heads, ")");
  TORCH_CHECK(std::isfinite(scale), "pyspec: scale must be finite, got ", scale);
  const HostTables h = check_tables(kv, k_cache, qo_indptr, page_table, kv_lens, q.size(0));
  const int32_t* ind = h.qo_indptr.data_ptr<int32_t>();
  int64_t max_new = 0;
  for (int64_t b = 0; b + 1 < h.qo_indptr.size(0); ++b) max_new = std::max<int64_t>(max_new, ind[b + 1] - ind[b]);
  at::Tensor mask, mask_indptr;
  if (tree_mask.has_value()) {
    const auto offsets = check_tree_mask(*tree_mask, k_cache, h.qo_indptr);
    TORCH_CHECK(max_new <= cuda::kMaxTreeTokens, "pyspec: with a tree_mask, CUDA tree attention takes at most ",
                cuda::kMaxTreeTokens, " new tokens per sequence, got ", max_new);
    mask = tree_mask->contiguous();
    mask_indptr = to_device(at::tensor(offsets, at::kLong), q);
  }
  at::Tensor out = at::empty_like(q);
  const auto seq = token_to_seq(h.qo_indptr);
  const at::Tensor token_seq = to_device(at::tensor(seq, at::kInt), q);
  const at::Tensor pt = page_table.contiguous(), lens = kv_lens.contiguous(), indptr = qo_indptr.contiguous();
  dispatch_cuda_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cuda::TreeAttentionParams<T> p{kv,
                                   device_tables(pt, lens),
                                   indptr.data_ptr<int32_t>(),
                                   token_seq.data_ptr<int32_t>(),
                                   mask.defined() ? reinterpret_cast<const uint8_t*>(mask.data_ptr()) : nullptr,
                                   mask.defined() ? mask_indptr.data_ptr<int64_t>() : nullptr,
                                   cuda_ptr<T>(q),
                                   cuda_ptr<T>(k_cache),
                                   cuda_ptr<T>(v_cache),
                                   cuda_ptr<T>(out),
                                   q.size(0),
                                   q.size(1),
                                   max_new,
                                   float(scale)};
    check_launch(cuda::launch_tree_attention<T>(p, at::cuda::getCurrentCUDAStream()), "tree_attention");
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CUDA, m) { m.impl("tree_attention", &tree_attention_cuda); }

}  // namespace pyspec
