// The CPU's vector instruction tier, detected at run time (cpuid): which kernels the CPU ops run.
// Torch-free.
//
// The extension is compiled for AVX2 (x86-64-v3); kernels of a higher tier are compiled with a
// function target attribute and run only where detected_isa() says the CPU (and the OS, which must
// save the wider registers) supports them. A tier is a speed choice only: every kernel of a tier
// gives the bits of the AVX2 kernel (q8's integer sums are exact), so switching it changes no output.
// PYSPEC_CPU_ISA (read by pyspec.ops) or set_isa() lowers it, for tests and comparisons.
#pragma once

#include <atomic>
#include <cstring>

namespace pyspec::cpu {

enum class Isa : int {
  Generic = 0,     // no x86 vector kernels (another architecture, or a build without AVX2)
  Avx2 = 1,        // AVX2 + FMA + F16C
  Avx512Vnni = 2,  // + AVX-512 F/BW/VL/DQ and VNNI (Intel Cascade Lake+, AMD Zen 4+)
};

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx2: return "avx2";
    case Isa::Avx512Vnni: return "avx512_vnni";
    default: return "generic";
  }
}

// The tier named `name`, or -1 for an unknown name.
inline int isa_from_name(const char* name) {
  for (int i = 0; i <= int(Isa::Avx512Vnni); ++i)
    if (std::strcmp(name, isa_name(Isa(i))) == 0) return i;
  return -1;
}

#if defined(__AVX2__) && defined(__x86_64__) && defined(__GNUC__)
#define PYSPEC_HAVE_AVX512_KERNELS 1
// The attribute of the AVX-512 VNNI kernels (their helpers inline into them).
#define PYSPEC_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#endif

// The highest tier this CPU and build run (libgcc's cpuid check includes the OS's register state).
inline Isa detected_isa() {
#if defined(PYSPEC_HAVE_AVX512_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni"))
    return Isa::Avx512Vnni;
  return Isa::Avx2;
#elif defined(__AVX2__)
  return Isa::Avx2;
#else
  return Isa::Generic;
#endif
}

inline std::atomic<int>& isa_setting() {
  static std::atomic<int> setting{int(detected_isa())};
  return setting;
}

// The tier the kernels run now.
inline Isa active_isa() { return Isa(isa_setting().load(std::memory_order_relaxed)); }

// Runs the kernels of tier `isa` from now on; false (nothing changed) above detected_isa(), or for
// Generic on an AVX2 build (its kernels are AVX2 at the least).
inline bool set_isa(Isa isa) {
  const Isa top = detected_isa();
  if (int(isa) < 0 || int(isa) > int(top) || (isa == Isa::Generic && top != Isa::Generic)) return false;
  isa_setting().store(int(isa), std::memory_order_relaxed);
  return true;
}

}  // namespace pyspec::cpu
