// CPU wrapper of the linear op: validate, then run csrc/kernels/linear.h over groups of weight rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../../kernels/linear.h"
#include "../linear_checks.h"
#include "dispatch.h"

namespace pyspec {
namespace {

// Smallest task worth a thread, in multiply-adds (~20 us on one core).
constexpr int64_t kMinTaskMacs = int64_t(1) << 18;

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear(x, weight, bias);
  const int64_t M = x.size(0), N = weight.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const at::Tensor xf = x.to(at::kFloat);  // bfloat16 -> float is exact; no copy for float32
  dispatch_cpu_dtype(weight.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const cpu::LinearParams<T> p{xf.data_ptr<float>(), ptr<T>(weight), bias.has_value() ? ptr<T>(*bias) : nullptr,
                                 ptr<T>(y), M, N, K};
    const int64_t grain = std::max<int64_t>(1, kMinTaskMacs / (cpu::kLinearRowsN * std::max<int64_t>(K, 1) * M));
    at::parallel_for(0, cpu::linear_num_groups(N), grain, [&](int64_t b, int64_t e) { cpu::linear(p, b, e); });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CPU, m) { m.impl("linear", &linear_cpu); }

}  // namespace pyspec
