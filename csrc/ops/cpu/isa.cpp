// The CPU kernel tier (csrc/kernels/cpu_isa.h): detected at run time, lowered for tests.
#include <torch/library.h>

#include <string>

#include "../../kernels/cpu_isa.h"

namespace pyspec {
namespace {

std::string cpu_isa() { return cpu::isa_name(cpu::active_isa()); }

std::string cpu_isa_detected() { return cpu::isa_name(cpu::detected_isa()); }

std::string set_cpu_isa(const std::string& name) {
  const int isa = cpu::isa_from_name(name.c_str());
  TORCH_CHECK(isa >= 0, "pyspec: unknown CPU kernel tier '", name, "' (generic, avx2, avx512_vnni)");
  TORCH_CHECK(cpu::set_isa(cpu::Isa(isa)), "pyspec: this CPU and build run the kernel tiers up to ",
              cpu_isa_detected(), " (generic only without AVX2), not ", name);
  return cpu_isa();
}

}  // namespace

TORCH_LIBRARY_IMPL(pyspec, CatchAll, m) {
  m.impl("cpu_isa", &cpu_isa);
  m.impl("cpu_isa_detected", &cpu_isa_detected);
  m.impl("set_cpu_isa", &set_cpu_isa);
}

}  // namespace pyspec
