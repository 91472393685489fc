// CPU wrappers of the packed-weight ops: validate, then run csrc/kernels/linear_packed.h.
//   linear_packed: y = x W^T + b, W given as parts of GGUF-packed rows (bitwise the fp32 linear over
//   the dequantised W); dequantize_rows: chosen rows of a packed tensor, widened (embedding lookup).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../kernels/linear_packed.h"
#include "../../kernels/linear_q8.h"
#include "../checks.h"

namespace pyspec {
namespace {

// Smallest task worth a thread, in multiply-adds (as linear's).
constexpr int64_t kMinTaskMacs = int64_t(1) << 18;

// A packed tensor [rows, row_bytes] of ggml type `qtype` holding rows of K values.
cpu::PackedPart check_packed(const at::Tensor& w, int64_t qtype, int64_t K, const char* name) {
  const cpu::QFormat f = cpu::qformat(int(qtype));
  TORCH_CHECK(f.block_values > 0, "pyspec: ", name, ": ggml type ", qtype,
              " is not a packed format pyspec decodes (Q4_0=2, Q4_1=3, Q5_0=6, Q5_1=7, Q8_0=8, Q4_K=12, Q5_K=13, Q6_K=14)");
  TORCH_CHECK(K % f.block_values == 0, "pyspec: ", name, ": K = ", K, " is not a multiple of the format's ",
              f.block_values, "-value blocks");
  TORCH_CHECK(w.scalar_type() == at::kByte, "pyspec: ", name, " must be uint8 (packed blocks), got ", w.scalar_type());
  TORCH_CHECK(w.device().is_cpu(), "pyspec: packed weights run on the CPU; ", name, " is on ", w.device());
  const int64_t row_bytes = K / f.block_values * f.block_bytes;
  TORCH_CHECK(w.dim() == 2 && w.size(1) == row_bytes, "pyspec: ", name, " must be [rows, ", row_bytes,
              "] (K = ", K, " values of type ", qtype, " per row), got shape ", shape_str(w));
  TORCH_CHECK(w.is_contiguous(), "pyspec: ", name, " must be contiguous");
  return {w.data_ptr<uint8_t>(), int(qtype), w.size(0), row_bytes, 0};
}

// x [M, K] float32, the weight parts (one ggml type each) and bias [N]: checked; the parts, in output order.
std::vector<cpu::PackedPart> check_packed_linear(const at::Tensor& x, at::TensorList weights, at::IntArrayRef qtypes,
                                                 const std::optional<at::Tensor>& bias, const char* op) {
  TORCH_CHECK(x.dim() == 2, "pyspec: x must be 2-D [M, K], got shape ", shape_str(x));
  TORCH_CHECK(x.scalar_type() == at::kFloat, "pyspec: x must be float32 with packed weights, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "pyspec: x must be contiguous");
  TORCH_CHECK(!weights.empty() && weights.size() == qtypes.size(), "pyspec: ", op,
              " needs one ggml type per weight part, got ", weights.size(), " parts and ", qtypes.size(), " types");
  std::vector<cpu::PackedPart> parts;
  int64_t N = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    parts.push_back(check_packed(weights[i], qtypes[i], x.size(1), "weight part"));
    parts.back().first_row = N;
    N += parts.back().rows;
  }
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == N, "pyspec: bias must be [N = ", N, "], got shape ", shape_str(b));
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.device().is_cpu() && b.is_contiguous(),
                "pyspec: bias must be a contiguous float32 CPU tensor");
  }
  return parts;
}

at::Tensor linear_packed_cpu(const at::Tensor& x, at::TensorList weights, at::IntArrayRef qtypes,
                             const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1);
  const std::vector<cpu::PackedPart> parts = check_packed_linear(x, weights, qtypes, bias, "linear_packed");
  const int64_t N = parts.back().first_row + parts.back().rows;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const cpu::PackedLinearParams p{x.data_ptr<float>(), bias.has_value() ? bias->data_ptr<float>() : nullptr,
                                  y.data_ptr<float>(), M, N, K};
  const std::vector<cpu::PackedGroup> groups = cpu::packed_groups(parts);
  const int64_t grain = std::max<int64_t>(1, kMinTaskMacs / (cpu::kLinearRowsN * std::max<int64_t>(K, 1) * M));
  at::parallel_for(0, int64_t(groups.size()), grain,
                   [&](int64_t b, int64_t e) { cpu::linear_packed(p, parts, groups, b, e); });
  return y;
}

// x quantised to int8 per row and 32 values, integer dot products (csrc/kernels/linear_q8.h).
at::Tensor linear_q8_cpu(const at::Tensor& x, at::TensorList weights, at::IntArrayRef qtypes,
                         const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(cpu::q8_available(), "pyspec: q8 compute needs an AVX2 build of the extension");
  for (size_t i = 0; i < qtypes.size(); ++i)
    TORCH_CHECK(cpu::q8_supported(int(qtypes[i])), "pyspec: q8 compute takes ggml types Q4_0, Q4_1, Q8_0, Q4_K and Q6_K; part ", i,
                " has type ", qtypes[i], " (use the exact linear_packed)");
  const std::vector<cpu::PackedPart> parts = check_packed_linear(x, weights, qtypes, bias, "linear_q8");
  const int64_t M = x.size(0), K = x.size(1), N = parts.back().first_row + parts.back().rows;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  cpu::Q8Rows xq(M, K);
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, M, 4, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) cpu::quantize_row_q8(xp + m * K, m, xq);
  });
  const std::vector<cpu::PackedGroup> groups = cpu::packed_groups(parts);
  const cpu::Isa isa = cpu::active_isa();  // one tier for the whole call
  const int64_t grain = std::max<int64_t>(1, 4 * kMinTaskMacs / (cpu::kLinearRowsN * K * M));
  at::parallel_for(0, int64_t(groups.size()), grain, [&](int64_t b, int64_t e) {
    cpu::linear_q8(xq, bias.has_value() ? bias->data_ptr<float>() : nullptr, y.data_ptr<float>(), M, N, parts, groups, b, e,
                   isa);
  });
  return y;
}

at::Tensor dequantize_rows_cpu(const at::Tensor& weight, int64_t qtype, int64_t K, const at::Tensor& ids) {
  TORCH_CHECK(K > 0, "pyspec: K must be positive, got ", K);
  const cpu::PackedPart part = check_packed(weight, qtype, K, "weight");
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1, "pyspec: ids must be a 1-D int64 tensor, got ",
              ids.scalar_type(), " of shape ", shape_str(ids));
  TORCH_CHECK(ids.device().is_cpu(), "pyspec: ids must be on the CPU like the packed weight, got ", ids.device());
  const at::Tensor idc = ids.contiguous();
  const int64_t n = idc.size(0);
  const int64_t* id = idc.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(id[i] >= 0 && id[i] < part.rows, "pyspec: ids[", i, "] = ", id[i], " is out of range [0, ", part.rows, ")");
  at::Tensor out = at::empty({n, K}, weight.options().dtype(at::kFloat));
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    cpu::dequant_rows(part.data, part.qtype, K, id + b, e - b, out.data_ptr<float>() + b * K);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CPU, m) {
  m.impl("linear_packed", &linear_packed_cpu);
  m.impl("dequantize_rows", &dequantize_rows_cpu);
  m.impl("linear_q8", &linear_q8_cpu);
}

}  // namespace pyspec
