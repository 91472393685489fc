// CUDA wrapper of the linear op: validate, then launch the torch-free kernel of csrc/kernels/linear.cu
// on the current stream.
#include <torch/library.h>

#include "../../kernels/cuda_kernels.h"
#include "../linear_checks.h"
#include "dispatch.cuh"

namespace pyspec {
namespace {

at::Tensor linear_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const c10::cuda::CUDAGuard guard(x.device());
  check_linear(x, weight, bias);
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  dispatch_cuda_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(cuda::launch_linear<T>(cuda_ptr<T>(x), cuda_ptr<T>(weight),
                                        bias.has_value() ? cuda_ptr<T>(*bias) : nullptr, cuda_ptr<T>(y), x.size(0),
                                        weight.size(0), x.size(1), at::cuda::getCurrentCUDAStream()),
                 "linear");
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CUDA, m) { m.impl("linear", &linear_cuda); }

}  // namespace pyspec
