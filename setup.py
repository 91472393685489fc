"""Builds pyspec's extension, pyspec._C: CPU ops always, CUDA ops when the environment allows.

Environment switches:
  PYSPEC_CUDA    auto (default): build CUDA sources when torch is a CUDA build and a CUDA toolkit
                 (CUDA_HOME / nvcc) is found; 1: require them; 0: CPU only. Never decided by
                 torch.cuda.is_available(), which is false on a build machine without a GPU.
  PYSPEC_NATIVE  0 (default): portable CPU code; on x86_64 the x86-64-v3 baseline
                 (-march=x86-64-v3: AVX2, FMA, F16C; Intel Haswell / AMD Excavator and later), so a
                 wheel runs on any such machine; nothing architecture-specific elsewhere.
                 1: -march=native, code for this machine's vector units only (an extension built
                 so may die of SIGILL on another CPU).
                 The CPU kernels use 8-lane vectors and an explicit fused multiply-add where __FMA__
                 is defined, else a * b + c rounded twice (csrc/kernels/simd.h): x86-64-v3 defines
                 __AVX2__ and __FMA__ as -march=native does on any AVX2 machine, so the default build
                 computes what the native builds did.
  PYSPEC_CUDA_ARCH  CUDA architectures (default "9.0"), as TORCH_CUDA_ARCH_LIST.
"""

import glob
import json
import os
import platform

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Written next to the extension: what it was compiled for. pyspec/ops.py checks the CPU against
# "cpu_flags" (names as in /proc/cpuinfo) before loading pyspec._C: a clear ImportError, not SIGILL.
BUILD_INFO = "_C_build.json"
X86_64_V3_FLAGS = ["avx2", "fma", "f16c"]  # the vector features; every CPU with them has the rest of v3


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def use_cuda() -> bool:
    mode = _flag("PYSPEC_CUDA", "auto")
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if mode in ("0", "off", "false", "no"):
        return False
    if mode in ("1", "on", "true", "yes"):
        if not available:
            raise RuntimeError(
                "PYSPEC_CUDA=1 needs a CUDA build of torch (torch.version.cuda is "
                f"{torch.version.cuda}) and a CUDA toolkit (CUDA_HOME is {cpp_extension.CUDA_HOME})"
            )
        return True
    if mode != "auto":
        raise RuntimeError(f"PYSPEC_CUDA must be auto, 0 or 1, got {mode!r}")
    return available


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def target_cpu() -> dict:
    """-march and the CPU features the extension needs at run time (see BUILD_INFO)."""
    mode = _flag("PYSPEC_NATIVE", "0") or "0"  # unset or empty: the default
    if mode in ("1", "on", "true", "yes"):
        return {"march": "native", "cpu_flags": []}  # this machine's: not checked at import
    if mode not in ("0", "off", "false", "no"):
        raise RuntimeError(f"PYSPEC_NATIVE must be 0 or 1, got {mode!r}")
    if platform.machine().lower() in ("x86_64", "amd64"):
        return {"march": "x86-64-v3", "cpu_flags": X86_64_V3_FLAGS}
    return {"march": None, "cpu_flags": []}  # the compiler's default for this architecture


def _beside(path: str) -> str:
    return os.path.join(os.path.dirname(path), BUILD_INFO)


class BuildExtension(cpp_extension.BuildExtension):
    """torch's build_ext, writing BUILD_INFO beside the extension (in the wheel; copied into the source
    tree with the extension by an editable install or --inplace); a change of target CPU forces a
    rebuild (setuptools would otherwise keep an extension newer than its sources)."""

    def _info_mapping(self):  # (built, in the source tree) for each extension
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
            yield _beside(regular_file), _beside(inplace_file)

    def get_outputs(self):
        if self.inplace:
            return super().get_outputs()
        return sorted(super().get_outputs() + [built for built, _ in self._info_mapping()])

    def _get_output_mapping(self):
        yield from super()._get_output_mapping()
        if self.inplace:
            yield from self._info_mapping()

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        for built, source in self._info_mapping():
            self.copy_file(built, source, level=self.verbose)

    def build_extension(self, ext):
        info_path = _beside(self.get_ext_fullpath(ext.name))
        info = target_cpu()
        try:
            with open(info_path) as f:
                stale = json.load(f) != info
        except (OSError, ValueError):
            stale = True
        if stale:
            self.force = True
        super().build_extension(ext)
        with open(info_path, "w") as f:
            json.dump(info, f)
            f.write("\n")


def extension():
    # No -std: torch's cpp_extension picks the standard its headers need (C++17 or C++20).
    cxx = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"]
    march = target_cpu()["march"]
    if march is not None:
        cxx.append(f"-march={march}")
    srcs = sources("csrc/ops/*.cpp") + sources("csrc/ops/cpu/*.cpp")
    kwargs = dict(name="pyspec._C", extra_compile_args={"cxx": cxx}, py_limited_api=True)
    if use_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("PYSPEC_CUDA_ARCH", "9.0"))
        srcs += sources("csrc/kernels/*.cu") + sources("csrc/ops/cuda/*.cu")
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        return cpp_extension.CUDAExtension(sources=srcs, **kwargs)
    return cpp_extension.CppExtension(sources=srcs, **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
