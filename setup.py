"""Builds lcmat: the pure-Python package always, the C++ extension (lcmat._C) where a compiler
exists, and its CUDA part where torch has CUDA and nvcc is found. When nothing can be compiled,
the package still installs and runs on the reference backend."""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _compiles(flags, source="int main() { return 0; }\n", compiler=None):
    """Whether the C++ compiler builds and links a tiny program with these flags."""
    import shutil
    import subprocess
    import sysconfig
    import tempfile
    cxx = compiler or os.environ.get("CXX") or (sysconfig.get_config_var("CXX") or "c++").split()[0]
    if shutil.which(cxx) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as fh:
            fh.write(source)
        try:
            result = subprocess.run([cxx, *flags, src, "-o", os.path.join(tmp, "probe")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


_OPENMP_PROBE = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def extensions():
    """(ext_modules, cmdclass) for lcmat._C, or ([], {}) where it cannot be built.

    The sources are one binding file per kernel family, csrc/<family>.cpp (its op schemas and CPU
    implementations, and its CUDA implementations under WITH_CUDA), the CPU kernels csrc/cpu/*.cpp
    and, where torch has CUDA and nvcc is found, the CUDA kernels csrc/cuda/*.cu. They build
    wherever a C++ compiler works, with OpenMP when the compiler has it. The build is portable (the
    compiler's default target) unless LCMAT_NATIVE=1, which adds -march=native: faster kernels
    (AVX2/AVX-512 where this CPU has them) for this machine only, so never for a wheel that others
    install. `make setup` builds natively. LCMAT_NO_EXTENSION=1 skips the extension; a failed
    compile falls back to the pure-Python package with a warning unless LCMAT_REQUIRE_EXTENSION=1.
    """
    if os.environ.get("LCMAT_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("lcmat: torch is not importable at build time; installing without the extension")
        return [], {}
    if not _compiles([]):
        print("lcmat: no working C++ compiler; installing without the extension (reference backend only)")
        return [], {}
    cxx_flags, link_flags = ["-O3"], []
    if _compiles(["-fopenmp"], _OPENMP_PROBE):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    else:
        print("lcmat: the compiler has no OpenMP; the CPU kernels will run on one thread")
    if os.environ.get("LCMAT_NATIVE") == "1":
        if _compiles(["-march=native"]):
            cxx_flags.append("-march=native")
        else:
            print("lcmat: LCMAT_NATIVE=1 but the compiler rejects -march=native; building portably")
    if _compiles(["-fno-math-errno"]):  # lets std::sqrt vectorise; no kernel reads errno
        cxx_flags.append("-fno-math-errno")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if not sources:
        return [], {}
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None and cuda_sources and \
        os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            "lcmat._C", sources + cuda_sources, define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags)
    else:
        ext = cpp_extension.CppExtension("lcmat._C", sources, extra_compile_args=cxx_flags,
                                         extra_link_args=link_flags)
    return [ext], {"build_ext": _tolerant_build_ext(cpp_extension.BuildExtension), "develop": _develop_in_place()}


def _develop_in_place():
    """`setup.py develop` (what pip runs for `pip install -e .` without a pyproject.toml) now hands
    over to an isolated `pip install -e`, where torch is not importable: build the extension in
    place first, here, where it is."""
    from setuptools.command.develop import develop

    class Develop(develop):
        def run(self):
            build_ext = self.reinitialize_command("build_ext", inplace=1)
            build_ext.ensure_finalized()
            self.run_command("build_ext")
            super().run()
    return Develop


def _tolerant_build_ext(base):
    """BuildExtension that leaves a working pure-Python package when the compile fails."""
    class BuildExt(base):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # a compile or link error
                if os.environ.get("LCMAT_REQUIRE_EXTENSION") == "1":
                    raise
                print(f"lcmat: WARNING: building {ext.name} failed ({exc}); "
                      "installing without it (reference backend only)")
    return BuildExt


ext_modules, cmdclass = extensions()
setup(
    name="lcmat",
    version="0.1.0",
    description="Fast, exact coreset selection: LCMat-S, FDMat and baselines on custom kernels",
    packages=["lcmat", "lcmat.reference", "lcmat.condense", "lcmat.triton_kernels"],
    package_dir={"lcmat.triton_kernels": "triton_kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy", "pot", "tqdm", "matplotlib", "scikit-learn", "pillow"],
    extras_require={"triton": ["triton"], "test": ["pytest", "pytest-benchmark", "hypothesis"],
                    # the outside libraries the microbenchmarks (bench/) compare against
                    "bench": ["pytest", "pytest-benchmark", "geomloss", "apricot-select", "backpack-for-pytorch",
                              "opacus",
                              # binary wheels only (CPython 3.11 and 3.12 on x86-64 Linux)
                              "submodlib-py; platform_system == 'Linux' and platform_machine == 'x86_64'"
                              " and python_version < '3.13'"]},
    entry_points={"console_scripts": ["lcmat=lcmat.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
