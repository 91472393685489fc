// Every pyspec op's schema, in one TORCH_LIBRARY block. Backends register their kernels apart:
// csrc/ops/cpu/*.cpp (CPU) and csrc/ops/cuda/*.cu (CUDA). Shapes and semantics: pyspec/ops.py.
#include <Python.h>
#include <torch/library.h>


// The extension is imported from Python (import pyspec._C) only for the registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(pyspec, m) {
  // Writes the new tokens' K/V at each sequence's own length (slot kv_lens[b] + i): no padding.
  m.def("paged_kv_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor qo_indptr, "
        "Tensor page_table, Tensor kv_lens) -> ()");
  // Ragged attention of new tokens over their sequence's committed KV and their tree ancestors.
  m.def("tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor qo_indptr, Tensor page_table, "
        "Tensor kv_lens, Tensor? tree_mask, float scale) -> Tensor");
  // Plan/run split of tree attention: validate a batch's metadata once per pass, then run every layer.
  m.def("tree_attention_plan(Tensor k_cache, Tensor v_cache, Tensor qo_indptr, Tensor page_table, "
        "Tensor kv_lens, Tensor? tree_mask, int q_heads) -> int");
  m.def("tree_attention_run(Tensor q, Tensor k_cache, Tensor v_cache, int plan, float scale) -> Tensor");
  // After the fused q/k/v projection: rotary on q and k, k and v appended at the plan's slots; returns q.
  m.def("rope_kv_append(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor positions, Tensor inv_freq, "
        "int plan) -> Tensor");
  // Moves accepted nodes' K/V right after each committed prefix, in place; kv_lens += accepted.
  m.def("kv_compact(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) kv_lens, Tensor page_table, "
        "Tensor accept_indptr, Tensor accept_nodes) -> ()");
  // Copies whole pages src_pages[i] -> dst_pages[i] (copy-on-write of shared pages).
  m.def("copy_pages(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor src_pages, Tensor dst_pages) -> ()");
  // Rotary position embedding (Llama/Qwen2 rotate-half) at explicit per-token positions.
  m.def("rotary_embedding(Tensor x, Tensor positions, Tensor inv_freq) -> Tensor");
  // y = x @ weight.T + bias; each output row bitwise independent of M, the other rows and the threads.
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // linear over GGUF-packed weight rows (uint8 parts, each of one ggml type): bitwise linear over the
  // dequantised weight; dequantize_rows widens chosen rows (an embedding lookup).
  m.def("linear_packed(Tensor x, Tensor[] weights, int[] qtypes, Tensor? bias) -> Tensor");
  m.def("dequantize_rows(Tensor weight, int qtype, int K, Tensor ids) -> Tensor");
  // linear_packed with x quantised to int8 per row (llama.cpp-style, fixed order, row invariant; not fp32).
  m.def("linear_q8(Tensor x, Tensor[] weights, int[] qtypes, Tensor? bias) -> Tensor");
  // RMSNorm of each row (fixed order); add_rms_norm also returns x + residual, the new residual stream.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  // SwiGLU's activation: x [T, 2I] = gate | up -> silu(gate) * up [T, I].
  m.def("silu_mul(Tensor x) -> Tensor");
  // The CPU kernel tier (generic, avx2, avx512_vnni): the one running, the highest this CPU runs, and
  // a lower one chosen (tiers give the same bits; a speed choice).
  m.def("cpu_isa() -> str");
  m.def("cpu_isa_detected() -> str");
  m.def("set_cpu_isa(str isa) -> str");
}
