// CPU wrappers of RMSNorm (with the residual add fused in) and silu(gate) * up: validate, then run
// csrc/kernels/norm.h over rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "../../kernels/norm.h"
#include "../norm_checks.h"
#include "dispatch.h"

namespace pyspec {
namespace {

// Rows per task: a row is a few microseconds at the widths of decoding.
constexpr int64_t kRowsPerTask = 4;

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rms_norm(x, nullptr, weight, eps);
  at::Tensor out = at::empty_like(x);
  dispatch_cpu_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, x.size(0), kRowsPerTask, [&](int64_t b, int64_t e) {
      cpu::rms_norm<T>(ptr<T>(x), nullptr, ptr<T>(weight), float(eps), ptr<T>(out), nullptr, x.size(1), b, e);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                                                    const at::Tensor& weight, double eps) {
  check_rms_norm(x, &residual, weight, eps);
  at::Tensor out = at::empty_like(x), sum = at::empty_like(x);
  dispatch_cpu_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, x.size(0), kRowsPerTask, [&](int64_t b, int64_t e) {
      cpu::rms_norm<T>(ptr<T>(x), ptr<T>(residual), ptr<T>(weight), float(eps), ptr<T>(out), ptr<T>(sum), x.size(1),
                       b, e);
    });
  });
  return {out, sum};
}

at::Tensor silu_mul_cpu(const at::Tensor& x) {
  check_silu_mul(x);
  const int64_t I = x.size(1) / 2;
  at::Tensor out = at::empty({x.size(0), I}, x.options());
  dispatch_cpu_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, x.size(0), kRowsPerTask,
                     [&](int64_t b, int64_t e) { cpu::silu_mul<T>(ptr<T>(x), ptr<T>(out), I, b, e); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("add_rms_norm", &add_rms_norm_cpu);
  m.impl("silu_mul", &silu_mul_cpu);
}

}  // namespace pyspec
