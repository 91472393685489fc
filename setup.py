"""Builds pyspec's extension, pyspec._C: CPU ops always, CUDA ops when the environment allows.

Environment switches:
  PYSPEC_CUDA    auto (default): build CUDA sources when torch is a CUDA build and a CUDA toolkit
                 (CUDA_HOME / nvcc) is found; 1: require them; 0: CPU only. Never decided by
                 torch.cuda.is_available(), which is false on a build machine without a GPU.
  PYSPEC_NATIVE  1 (default): compile the CPU kernels for this machine's vector units
                 (-march=native); 0: portable code for distribution.
  PYSPEC_CUDA_ARCH  CUDA architectures (default "9.0"), as TORCH_CUDA_ARCH_LIST.
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


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


def extension():
    # No -std: torch's cpp_extension picks the standard its headers need (C++17 or C++20).
    cxx = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"]
    if _flag("PYSPEC_NATIVE", "1") not in ("0", "off", "false", "no"):
        cxx.append("-march=native")
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
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
