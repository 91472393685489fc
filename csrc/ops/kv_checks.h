// Argument checks of the cache-bookkeeping ops (compaction, page copies) and rotary embedding.
#pragma once

#include <algorithm>
#include <unordered_set>
#include <utility>

#include "checks.h"

namespace pyspec {

struct CompactMeta {
  HostTables tables;                       // qo_indptr unused (empty)
  at::Tensor accept_indptr, accept_nodes;  // host int32
};

// accept_indptr [B+1] CSR offsets into accept_nodes; each sequence's accepted node indices are
// strictly increasing (parents precede children in node order) and their slots exist in its pages.
inline CompactMeta check_compact(const PagedKV& kv, const at::Tensor& cache, const at::Tensor& kv_lens,
                                 const at::Tensor& page_table, const at::Tensor& accept_indptr,
                                 const at::Tensor& accept_nodes) {
  check_index_tensor(kv_lens, "kv_lens", 1);
  check_index_tensor(page_table, "page_table", 2);
  check_index_tensor(accept_indptr, "accept_indptr", 1);
  check_index_tensor(accept_nodes, "accept_nodes", 1);
  for (auto* t : {&kv_lens, &page_table, &accept_indptr, &accept_nodes}) check_same_device(cache, *t, "metadata");
  TORCH_CHECK(kv_lens.is_contiguous(), "pyspec: kv_lens must be contiguous (it is updated in place)");
  const int64_t B = kv_lens.size(0);
  TORCH_CHECK(page_table.size(0) == B, "pyspec: page_table must have batch_size = ", B, " rows, got ",
              page_table.size(0));
  TORCH_CHECK(accept_indptr.size(0) == B + 1, "pyspec: accept_indptr must have batch_size + 1 = ", B + 1,
              " entries, got ", accept_indptr.size(0));
  CompactMeta m{{at::Tensor(), host_copy(page_table), host_copy(kv_lens)}, host_copy(accept_indptr),
                host_copy(accept_nodes)};
  const int32_t* ind = m.accept_indptr.data_ptr<int32_t>();
  const int32_t* nodes = m.accept_nodes.data_ptr<int32_t>();
  TORCH_CHECK(ind[0] == 0 && ind[B] == accept_nodes.size(0), "pyspec: accept_indptr must run from 0 to ",
              "len(accept_nodes) = ", accept_nodes.size(0), ", got ", ind[0], " .. ", ind[B]);
  const PageTables pt = m.tables.tables();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(ind[b + 1] >= ind[b], "pyspec: accept_indptr must be non-decreasing at ", b);
    TORCH_CHECK(pt.kv_lens[b] >= 0, "pyspec: kv_lens[", b, "] = ", pt.kv_lens[b], " is negative");
    int64_t last = -1;
    for (int32_t i = ind[b]; i < ind[b + 1]; ++i) {
      TORCH_CHECK(nodes[i] > last, "pyspec: accepted nodes of sequence ", b,
                  " must be strictly increasing non-negative node indices, got ", nodes[i], " after ", last);
      last = nodes[i];
    }
    if (last >= 0) check_pages_cover(kv, pt, b, int64_t(pt.kv_lens[b]) + last + 1, "accepted nodes");
  }
  return m;
}

// src_pages, dst_pages: int32 [n] page indices in range; destinations distinct and never a source.
inline std::pair<at::Tensor, at::Tensor> check_copy_pages(const PagedKV& kv, const at::Tensor& cache,
                                                          const at::Tensor& src_pages, const at::Tensor& dst_pages) {
  check_index_tensor(src_pages, "src_pages", 1);
  check_index_tensor(dst_pages, "dst_pages", 1);
  check_same_device(cache, src_pages, "src_pages");
  check_same_device(cache, dst_pages, "dst_pages");
  TORCH_CHECK(src_pages.size(0) == dst_pages.size(0), "pyspec: src_pages has ", src_pages.size(0),
              " entries but dst_pages has ", dst_pages.size(0));
  auto src = host_copy(src_pages), dst = host_copy(dst_pages);
  std::unordered_set<int32_t> dsts;
  for (int64_t i = 0; i < src.size(0); ++i) {
    for (auto [name, page] : {std::pair{"src_pages", src.data_ptr<int32_t>()[i]},
                              std::pair{"dst_pages", dst.data_ptr<int32_t>()[i]}})
      TORCH_CHECK(page >= 0 && page < kv.num_pages, "pyspec: ", name, "[", i, "] = ", page,
                  " is out of range [0, ", kv.num_pages, ")");
    TORCH_CHECK(dsts.insert(dst.data_ptr<int32_t>()[i]).second, "pyspec: dst_pages has duplicate page ",
                dst.data_ptr<int32_t>()[i]);
  }
  for (int64_t i = 0; i < src.size(0); ++i)
    TORCH_CHECK(!dsts.count(src.data_ptr<int32_t>()[i]), "pyspec: page ", src.data_ptr<int32_t>()[i],
                " is both a source and a destination");
  return {src, dst};
}

// x [T, heads, head_dim] (even head_dim <= kMaxHeadDim); positions int64 [T]; inv_freq float32 [head_dim/2].
inline void check_rotary(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq) {
  check_kv_dtype(x, "x");
  TORCH_CHECK(x.dim() == 3, "pyspec: x must be [num_tokens, heads, head_dim], got ", shape_str(x));
  TORCH_CHECK(x.is_contiguous(), "pyspec: x must be contiguous");
  const int64_t d = x.size(2);
  TORCH_CHECK(d % 2 == 0 && d <= kMaxHeadDim, "pyspec: rotary head_dim must be even and <= ", kMaxHeadDim,
              ", got ", d);
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.dim() == 1 && positions.size(0) == x.size(0),
              "pyspec: positions must be int64 [", x.size(0), "], got ", positions.scalar_type(), " ",
              shape_str(positions));
  TORCH_CHECK(inv_freq.scalar_type() == at::kFloat && inv_freq.dim() == 1 && inv_freq.size(0) == d / 2,
              "pyspec: inv_freq must be float32 [", d / 2, "], got ", inv_freq.scalar_type(), " ",
              shape_str(inv_freq));
  check_same_device(x, positions, "positions");
  check_same_device(x, inv_freq, "inv_freq");
  TORCH_CHECK(positions.is_contiguous() && inv_freq.is_contiguous(),
              "pyspec: positions and inv_freq must be contiguous");
}

}  // namespace pyspec
