// CPU tree attention over a paged KV cache, on raw pointers.
//
// Semantics. Sequence b has L_b committed KV slots and n_b new tokens whose K/V already sit in slots
// L_b .. L_b + n_b - 1 (in node order). New token i sees all committed slots and the new slots L_b + j
// for which mask[i][j] is set (its tree ancestors and itself; causal when there is no mask).
//
// Block invariance. A row's result depends only on its own *logical* key list: the committed slots in
// order, then its visible new slots in node order. Those lists are cut into fixed tiles of kTile keys
// and fixed chunks of kChunk keys by logical index, and every tile runs the same arithmetic whatever
// the number of rows that share it. So a query computed inside a tree of n tokens gives bit-for-bit
// the result of decoding it alone after its ancestors were committed, on any number of threads: a
// verified block can never flip a near-tie that token-by-token decoding would not.
//
// Work split. Items are (sequence, kv head, chunk, block of query tokens); each item keeps an online
// softmax state per row (all query heads of the GQA group of each token) and writes a partial
// (max, sum, output); a second pass merges each row's chunks in order.
//
// Keys and values are read in place from their pages through row pointers: decoding one token is
// bound by streaming the sequence's K/V once (a copy into transposed tiles cost 3-5x that).
//
// Napkin math (2 AVX2 cores, fp32, ~190 GFLOP/s peak): a 64-token tree over 4096 keys with 9 query
// heads of dim 64 is 0.6 GFLOP, so the floor is ~3 ms; K/V reads (6 MB) are ~0.5 ms at 12 GB/s.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"
#include "simd.h"

namespace pyspec::cpu {

constexpr int kTile = 32;              // keys per tile: the unit of the online softmax
constexpr int kChunk = 512;            // keys per chunk: the unit of the parallel split (multiple of kTile)
constexpr int kRowsPerItem = 192;      // query rows (tokens x group heads) per work item, at most
constexpr int kTileVecs = kTile / kLanes;

// 2^x for x <= 0, vectorised; relative error ~2e-7; exactly 0 for x < -126 (including -inf).
inline vfloat exp2_neg(vfloat x) {
  const vfloat lo = splat(-126.f);
  vfloat xc = x < lo ? lo : x;
  const vfloat magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  vfloat t = xc + magic;
  vint n;
  memcpy(&n, &t, sizeof(n));
  n -= 0x4B400000;  // bits of 1.5 * 2^23
  vfloat f = xc - (t - magic);  // in [-0.5, 0.5]
  vfloat p = splat(1.5403530e-4f);
  p = p * f + 1.3333558e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  vint bits = (n + 127) << 23;
  vfloat scale;
  memcpy(&scale, &bits, sizeof(scale));
  vfloat r = p * scale;
  return x < lo ? vfloat{} : r;
}
inline float exp2_neg(float x) { return exp2_neg(splat(x))[0]; }

// The tile's keys and values are read in place from the cache through row pointers (no gather, no
// transposition): krow[j], vrow[j] point at key j's head_dim values.

// S[r][j] = Q[r] . K_j for `rows` rows and the tile's `count` keys. Each score is one dot product over
// d in lane d % kLanes (fused multiply-adds, the last partial vector zero-padded), then reduce_lanes:
// it depends only on q and k, never on how many rows or keys share the call. Blocks of 4 keys x RB
// rows keep 4 RB independent sums in registers (one row alone would wait on the FMA latency).
template <int RB, bool Full, typename T>
inline void scores_block(const float* Q, int64_t dp, int64_t d, const T* const (&k)[4], float* S, int j0,
                         int count) {
  vfloat acc[4][RB] = {};
  for (int64_t c = 0; c < d; c += kLanes) {
    vfloat qv[RB];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) qv[r] = load(Q + r * dp + c);  // Q is zero-padded to dp
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const vfloat kv = Full ? load(k[j] + c) : load_n(k[j] + c, d - c);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) acc[j][r] = fmadd(kv, qv[r], acc[j][r]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    float s[4];
    reduce_lanes4(acc[0][r], acc[1][r], acc[2][r], acc[3][r], s);
    for (int j = 0; j < 4 && j0 + j < count; ++j) S[r * kTile + j0 + j] = s[j];
  }
}

template <bool Full, typename T>
inline void scores_rows_of(const float* Q, int64_t rows, int64_t dp, int64_t d, const T* const* krow, int count,
                           float* S) {
  for (int j0 = 0; j0 < count; j0 += 4) {
    const T* k[4];
    for (int j = 0; j < 4; ++j) k[j] = krow[std::min(j0 + j, count - 1)];  // a short group repeats its last key
    int64_t r = 0;
    for (; r + 3 <= rows; r += 3) scores_block<3, Full>(Q + r * dp, dp, d, k, S + r * kTile, j0, count);
    if (rows - r == 2) scores_block<2, Full>(Q + r * dp, dp, d, k, S + r * kTile, j0, count);
    if (rows - r == 1) scores_block<1, Full>(Q + r * dp, dp, d, k, S + r * kTile, j0, count);
  }
}

template <typename T>
inline void scores_rows(const float* Q, int64_t rows, int64_t dp, int64_t d, const T* const* krow, int count,
                        float* S) {
  if (d == dp) scores_rows_of<true>(Q, rows, dp, d, krow, count, S);  // whole vectors: no partial loads
  else scores_rows_of<false>(Q, rows, dp, d, krow, count, S);
}

// O[r] += sum_{j < count} P[r][j] V_j for RB rows, over head-dim columns [c0, c0 + kLanes * NV): each
// output a fused multiply-add per key, in key order. RB x NV accumulators, RB weights and one V vector
// fit the 16 vector registers of AVX2 (more would spill the accumulators to the stack).
template <int RB, int NV, bool Full, typename T>
inline void pv_block(const float* P, const T* const* vrow, int64_t dp, int64_t d, int count, int64_t c0, float* O) {
  vfloat acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = load(O + r * dp + c0 + v * kLanes);
  for (int j = 0; j < count; ++j) {
    vfloat p[RB];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) p[r] = splat(P[r * kTile + j]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t c = c0 + v * kLanes;
      const vfloat x = Full ? load(vrow[j] + c) : load_n(vrow[j] + c, d - c);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) acc[r][v] = fmadd(p[r], x, acc[r][v]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) store(O + r * dp + c0 + v * kLanes, acc[r][v]);
}

template <int RB, bool Full, typename T>
inline void pv_rows_of(const float* P, const T* const* vrow, int64_t dp, int64_t d, int count, float* O) {
  int64_t c = 0;
  for (; c + 4 * kLanes <= dp; c += 4 * kLanes) pv_block<RB, 4, Full>(P, vrow, dp, d, count, c, O);
  for (; c < dp; c += kLanes) pv_block<RB, 1, Full>(P, vrow, dp, d, count, c, O);
}

template <int RB, typename T>
inline void pv_rows(const float* P, const T* const* vrow, int64_t dp, int64_t d, int count, float* O) {
  if (d == dp) pv_rows_of<RB, true>(P, vrow, dp, d, count, O);
  else pv_rows_of<RB, false>(P, vrow, dp, d, count, O);
}

// Online-softmax state of `rows` query rows; Q is pre-scaled by softmax_scale * log2(e).
struct RowsState {
  int64_t rows = 0, dp = 0;
  std::vector<float> Q, O, m, l, S;  // Q, O: [rows, dp]; m, l: [rows]; S: [rows, kTile]

  void reset(int64_t rows_, int64_t dp_) {
    rows = rows_;
    dp = dp_;
    Q.assign(rows * dp, 0.f);
    O.assign(rows * dp, 0.f);
    m.assign(rows, -std::numeric_limits<float>::infinity());
    l.assign(rows, 0.f);
    S.resize(rows * kTile);
  }
};

// Attends rows [r0, r0 + nr) of `st` to one tile of `tile_keys` keys (row pointers krow, vrow, head_dim
// d); row r sees the first counts[r] keys of the tile (0 = the tile is not in its list).
template <typename T>
inline void attend_tile(RowsState& st, int64_t r0, int64_t nr, const int* counts, const T* const* krow,
                        const T* const* vrow, int tile_keys, int64_t d) {
  const int64_t dp = st.dp;
  float* S = st.S.data() + r0 * kTile;
  const float* Q = st.Q.data() + r0 * dp;
  scores_rows(Q, nr, dp, d, krow, tile_keys, S);
  int64_t r = 0;

  const float neg_inf = -std::numeric_limits<float>::infinity();
  int max_count = 0;
  for (r = 0; r < nr; ++r) {
    const int count = counts[r];
    max_count = std::max(max_count, count);
    float* s = S + r * kTile;
    if (count == 0) {
      std::fill(s, s + kTile, 0.f);
      continue;
    }
    std::fill(s + count, s + kTile, neg_inf);
    vfloat mx = load(s);
    for (int v = 1; v < kTileVecs; ++v) mx = mx > load(s + v * kLanes) ? mx : load(s + v * kLanes);
    float& m = st.m[r0 + r];
    const float m_new = std::max(m, hmax(mx));
    const float alpha = exp2_neg(m - m_new);
    vfloat sum = {};
    for (int v = 0; v < kTileVecs; ++v) {
      vfloat p = exp2_neg(load(s + v * kLanes) - m_new);
      store(s + v * kLanes, p);
      sum += p;
    }
    st.l[r0 + r] = st.l[r0 + r] * alpha + hsum(sum);
    if (m_new == m) continue;  // alpha == 1: rescaling would be exact, skip it
    m = m_new;
    float* o = st.O.data() + (r0 + r) * dp;
    const vfloat a = splat(alpha);
    for (int64_t c = 0; c < dp; c += kLanes) store(o + c, load(o + c) * a);
  }
  // Rows whose list ends earlier have p = 0 past their count: adding 0 * V leaves them unchanged.
  float* O = st.O.data() + r0 * dp;
  for (r = 0; r + 2 <= nr; r += 2) pv_rows<2>(S + r * kTile, vrow, dp, d, max_count, O + r * dp);
  for (; r < nr; ++r) pv_rows<1>(S + r * kTile, vrow, dp, d, max_count, O + r * dp);
}

// Everything one tree-attention call needs, as raw pointers.
template <typename T>
struct TreeAttentionParams {
  PagedKV kv;
  PageTables tables;
  const int32_t* qo_indptr;    // [batch_size + 1] CSR offsets of new tokens
  const uint8_t* mask;         // packed per sequence, [sum_b n_b * n_b] row-major; null = causal
  const int64_t* mask_indptr;  // [batch_size + 1] offsets into mask; null when mask is null
  const T* q;                  // [T, q_heads, head_dim]
  const T* k_cache;            // one layer's pool [num_pages, page_size, kv_heads, head_dim]
  const T* v_cache;
  T* out;                      // [T, q_heads, head_dim]
  int64_t q_heads;
  float scale;                 // softmax scale
};

// One work item: sequence, kv head, chunk, and a block of the sequence's new tokens.
struct AttentionItem {
  int32_t seq, kv_head, chunk, token_begin, token_end;
};

// Partial results per (token, chunk, q head): m, l and the unnormalised output. Token t's chunks are
// slots chunk_base[t] .. chunk_base[t + 1] - 1: only the chunks its key list reaches.
struct Partials {
  int64_t dp = 0;
  std::vector<int64_t> chunk_base;  // [T + 1] CSR offsets of each token's chunk slots
  std::vector<float> m, l, o;        // [slots * q_heads], same, [slots * q_heads * dp]

  // Sizes m, l and o for chunk_base (set by plan_tree_attention); their values are written by the items.
  void allocate(int64_t q_heads) {
    const int64_t slots = chunk_base.back() * q_heads;
    m.resize(slots);
    l.resize(slots);
    o.resize(slots * dp);
  }
  int64_t num_chunks_of(int64_t token) const { return chunk_base[token + 1] - chunk_base[token]; }
  int64_t slot(int64_t token, int64_t chunk, int64_t q_heads, int64_t head) const {
    return (chunk_base[token] + chunk) * q_heads + head;
  }
};

inline int64_t num_chunks(int64_t keys) { return (keys + kChunk - 1) / kChunk; }

// Length of the logical key list of new token i (local index) of sequence b.
template <typename T>
int64_t num_keys(const TreeAttentionParams<T>& p, int64_t b, int64_t i, int64_t n) {
  int64_t visible = i + 1;
  if (p.mask != nullptr) {
    const uint8_t* row = p.mask + p.mask_indptr[b] + i * n;
    visible = 0;
    for (int64_t j = 0; j < n; ++j) visible += row[j] != 0;
  }
  return p.tables.kv_lens[b] + visible;
}

// Lists the work items (skipping chunks no token of the block reaches) and lays out the partials'
// slots (chunk_base; Partials::allocate sizes the buffers). Reads only the tables, qo_indptr, the mask
// and q_heads of `p`, so one plan serves every layer of a pass.
template <typename T>
std::vector<AttentionItem> plan_tree_attention(const TreeAttentionParams<T>& p, Partials& part) {
  std::vector<AttentionItem> items;
  const int64_t group = p.q_heads / p.kv.kv_heads;
  const int64_t tokens_per_item = std::max<int64_t>(1, kRowsPerItem / group);
  const int64_t num_tokens = p.qo_indptr[p.tables.batch_size];
  part.dp = (p.kv.head_dim + kLanes - 1) / kLanes * kLanes;
  part.chunk_base.assign(num_tokens + 1, 0);
  for (int64_t b = 0; b < p.tables.batch_size; ++b) {
    const int64_t t0 = p.qo_indptr[b], t1 = p.qo_indptr[b + 1];
    for (int64_t t = t0; t < t1; ++t)
      part.chunk_base[t + 1] = part.chunk_base[t] + num_chunks(num_keys(p, b, t - t0, t1 - t0));
    for (int64_t s = t0; s < t1; s += tokens_per_item) {
      const int64_t e = std::min(t1, s + tokens_per_item);
      int64_t chunks = 0;
      for (int64_t t = s; t < e; ++t) chunks = std::max(chunks, part.num_chunks_of(t));
      for (int64_t h = 0; h < p.kv.kv_heads; ++h)
        for (int64_t c = 0; c < chunks; ++c)
          items.push_back({int32_t(b), int32_t(h), int32_t(c), int32_t(s), int32_t(e)});
    }
  }
  return items;
}

// Row pointers of logical keys [x0, x0 + count) of a sequence's kv head `head` into the caches;
// slot_of(x) maps a logical index to its cache slot. The rows of the next tile's keys (up to
// `list_end`) are prefetched into L2, so that DRAM streams them while this tile computes; the `first`
// tile of a loop prefetches its own rows too. A head's rows are short runs at a stride (the other
// heads' rows lie between), which the hardware prefetchers miss; prefetched into L1 instead, a tile's
// 256 lines queue on L1's few miss buffers (Zen 4: decoding 1 token over 1024 keys 1.5x slower).
template <typename T, typename SlotOf>
void tile_rows(const TreeAttentionParams<T>& p, int64_t seq, int64_t head, int64_t x0, int count, int64_t list_end,
               bool first, SlotOf slot_of, const T** krow, const T** vrow) {
  const int64_t bytes = p.kv.head_dim * int64_t(sizeof(T));
  for (int j = 0; j < count; ++j) {
    const int64_t off = p.tables.offset(p.kv, seq, slot_of(x0 + j), head);
    krow[j] = p.k_cache + off;
    vrow[j] = p.v_cache + off;
  }
  const int64_t ahead_end = std::min<int64_t>(list_end, x0 + count + kTile);
  for (int64_t x = first ? x0 : x0 + count; x < ahead_end; ++x) {
    const int64_t off = p.tables.offset(p.kv, seq, slot_of(x), head);
    for (int64_t c = 0; c < bytes; c += 64) {
      __builtin_prefetch(reinterpret_cast<const char*>(p.k_cache + off) + c, 0, 2);  // prefetcht1: into L2
      __builtin_prefetch(reinterpret_cast<const char*>(p.v_cache + off) + c, 0, 2);
    }
  }
}

// Visible new-token indices of token i (local index within its sequence) in node order.
template <typename T>
void visible_nodes(const TreeAttentionParams<T>& p, int64_t seq, int64_t i, int64_t n,
                   std::vector<int32_t>& out) {
  out.clear();
  const uint8_t* row = p.mask + p.mask_indptr[seq] + i * n;
  for (int64_t j = 0; j < n; ++j)
    if (row[j]) out.push_back(int32_t(j));
}

template <typename T>
void run_attention_item(const TreeAttentionParams<T>& p, const AttentionItem& it, Partials& part) {
  const int64_t d = p.kv.head_dim, dp = part.dp;
  const int64_t group = p.q_heads / p.kv.kv_heads;
  const int64_t seq = it.seq, t_seq = p.qo_indptr[seq];
  const int64_t L = p.tables.kv_lens[seq], n = p.qo_indptr[seq + 1] - t_seq;
  const int64_t tokens = it.token_end - it.token_begin;
  const float qscale = p.scale * 1.4426950408889634f;  // log2(e): the softmax runs in base 2

  RowsState st;
  st.reset(tokens * group, dp);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t g = 0; g < group; ++g) {
      const T* q = p.q + ((it.token_begin + t) * p.q_heads + it.kv_head * group + g) * d;
      float* dst = st.Q.data() + (t * group + g) * dp;
      for (int64_t c = 0; c < d; ++c) dst[c] = to_float(q[c]) * qscale;
    }

  const T* krow[kTile];
  const T* vrow[kTile];
  std::vector<int> counts(st.rows);
  const int64_t x_begin = int64_t(it.chunk) * kChunk;
  const int64_t x_end = x_begin + kChunk;
  auto identity = [](int64_t x) { return x; };

  if (p.mask == nullptr) {
    // Causal: logical index == slot; token i sees slots [0, L + i]. One tile of rows serves all.
    const int64_t last = std::min(x_end, L + (it.token_end - t_seq));  // exclusive
    for (int64_t x0 = x_begin; x0 < last; x0 += kTile) {
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t horizon = L + (it.token_begin + t - t_seq) + 1;
        const int c = int(std::clamp<int64_t>(horizon - x0, 0, kTile));
        std::fill(counts.begin() + t * group, counts.begin() + (t + 1) * group, c);
      }
      const int count = int(std::min<int64_t>(kTile, last - x0));
      tile_rows(p, seq, it.kv_head, x0, count, last, x0 == x_begin, identity, krow, vrow);
      attend_tile(st, 0, st.rows, counts.data(), krow, vrow, count, d);
    }
  } else {
    // Tree: tiles wholly inside the committed prefix are shared; the rest is per token.
    const int64_t shared_end = std::min(x_end, L / kTile * kTile);
    std::fill(counts.begin(), counts.end(), kTile);
    for (int64_t x0 = x_begin; x0 < shared_end; x0 += kTile) {
      tile_rows(p, seq, it.kv_head, x0, kTile, shared_end, x0 == x_begin, identity, krow, vrow);
      attend_tile(st, 0, st.rows, counts.data(), krow, vrow, kTile, d);
    }
    std::vector<int32_t> vis;
    for (int64_t t = 0; t < tokens; ++t) {
      visible_nodes(p, seq, it.token_begin + t - t_seq, n, vis);
      auto slot_of = [&](int64_t x) { return x < L ? x : L + vis[x - L]; };
      const int64_t last = std::min<int64_t>(x_end, L + int64_t(vis.size()));
      for (int64_t x0 = std::max(x_begin, shared_end); x0 < last; x0 += kTile) {
        const int count = int(std::min<int64_t>(kTile, last - x0));
        std::fill(counts.begin() + t * group, counts.begin() + (t + 1) * group, count);
        tile_rows(p, seq, it.kv_head, x0, count, last, x0 == std::max(x_begin, shared_end), slot_of, krow, vrow);
        attend_tile(st, t * group, group, counts.data() + t * group, krow, vrow, count, d);
      }
    }
  }

  for (int64_t t = 0; t < tokens; ++t) {
    if (it.chunk >= part.num_chunks_of(it.token_begin + t)) continue;  // its keys end before this chunk
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = t * group + g;
      const int64_t slot = part.slot(it.token_begin + t, it.chunk, p.q_heads, it.kv_head * group + g);
      part.m[slot] = st.m[r];
      part.l[slot] = st.l[r];
      memcpy(part.o.data() + slot * dp, st.O.data() + r * dp, dp * sizeof(float));
    }
  }
}

// Merges the chunks of tokens [begin, end) in chunk order and writes the output.
template <typename T>
void merge_attention_chunks(const TreeAttentionParams<T>& p, const Partials& part, int64_t begin, int64_t end) {
  const int64_t d = p.kv.head_dim, dp = part.dp;
  std::vector<float> acc(dp);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t chunks = part.num_chunks_of(t);
    for (int64_t h = 0; h < p.q_heads; ++h) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < chunks; ++c) m = std::max(m, part.m[part.slot(t, c, p.q_heads, h)]);
      std::fill(acc.begin(), acc.end(), 0.f);
      float l = 0.f;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t slot = part.slot(t, c, p.q_heads, h);
        if (part.l[slot] == 0.f) continue;  // a chunk with none of this row's keys (masked-out nodes)
        const float w = exp2_neg(part.m[slot] - m);
        l += part.l[slot] * w;
        const float* o = part.o.data() + slot * dp;
        for (int64_t i = 0; i < d; ++i) acc[i] += o[i] * w;
      }
      T* out = p.out + (t * p.q_heads + h) * d;
      const float inv = l > 0.f ? 1.f / l : 0.f;  // a row that sees no key outputs zeros
      for (int64_t i = 0; i < d; ++i) out[i] = from_float<T>(acc[i] * inv);
    }
  }
}

}  // namespace pyspec::cpu
