// Plain-C++ descriptions of the paged KV cache and the ragged batch, shared by the CPU templates and
// the CUDA kernels. No torch headers: g++ and nvcc build everything under csrc/kernels/ alone.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define PYSPEC_HOST_DEVICE __host__ __device__
#else
#define PYSPEC_HOST_DEVICE
#endif

namespace pyspec {

// Largest head dimension the attention kernels accept (scratch buffers are sized by it).
constexpr int kMaxHeadDim = 256;

// bfloat16 stored as its upper 16 bits; layout-compatible with at::BFloat16 and __nv_bfloat16.
struct bf16 {
  uint16_t bits;
};

PYSPEC_HOST_DEVICE inline float to_float(float x) { return x; }
PYSPEC_HOST_DEVICE inline float to_float(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

template <typename T>
PYSPEC_HOST_DEVICE inline T from_float(float x);
template <>
PYSPEC_HOST_DEVICE inline float from_float<float>(float x) { return x; }
template <>
PYSPEC_HOST_DEVICE inline bf16 from_float<bf16>(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  bf16 out;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a (quiet) NaN
    out.bits = 0x7fc0;
    return out;
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  out.bits = static_cast<uint16_t>(u >> 16);
  return out;
}

// One layer's paged cache: K and V pools of shape [num_layers, num_pages, page_size, kv_heads, head_dim],
// contiguous (num_layers is 1 for a single layer).
struct PagedKV {
  int64_t num_layers;
  int64_t num_pages;
  int64_t page_size;
  int64_t kv_heads;
  int64_t head_dim;

  PYSPEC_HOST_DEVICE int64_t layer_stride() const { return num_pages * page_stride(); }
  PYSPEC_HOST_DEVICE int64_t page_stride() const { return page_size * kv_heads * head_dim; }
  PYSPEC_HOST_DEVICE int64_t slot_stride() const { return kv_heads * head_dim; }
};

// Per-sequence view of the cache: which pages hold its slots, and its committed length.
struct PageTables {
  int64_t batch_size;
  int64_t max_pages;           // row length of page_table
  const int32_t* page_table;   // [batch_size, max_pages] page index of each logical page
  const int32_t* kv_lens;      // [batch_size] committed KV length before this step's new tokens

  // Element offset (within one layer) of slot `slot`, kv head `head` of sequence `seq`.
  PYSPEC_HOST_DEVICE int64_t offset(const PagedKV& kv, int64_t seq, int64_t slot, int64_t head) const {
    int64_t page = page_table[seq * max_pages + slot / kv.page_size];
    return page * kv.page_stride() + (slot % kv.page_size) * kv.slot_stride() + head * kv.head_dim;
  }
};

}  // namespace pyspec
