"""Builds lcmat: the pure-Python package always, the C++ extension (lcmat._C) where a compiler
exists, and its CUDA part where torch has CUDA and nvcc is found. When nothing can be compiled,
the package still installs and runs on the reference backend."""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    """(ext_modules, cmdclass) for lcmat._C, or ([], {}) where it cannot be built."""
    if os.environ.get("LCMAT_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        print("lcmat: torch is not importable at build time; installing without the extension")
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if not sources:
        return [], {}
    return ([cpp_extension.CppExtension("lcmat._C", sources, extra_compile_args=["-O3"])],
            {"build_ext": cpp_extension.BuildExtension})


ext_modules, cmdclass = extensions()
setup(
    name="lcmat",
    version="0.1.0",
    description="Fast, exact coreset selection: LCMat-S, FDMat and baselines on custom kernels",
    packages=["lcmat", "lcmat.reference", "lcmat.triton_kernels"],
    package_dir={"lcmat.triton_kernels": "triton_kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy", "pot", "tqdm", "matplotlib", "scikit-learn", "pillow"],
    extras_require={"triton": ["triton"], "test": ["pytest", "pytest-benchmark", "hypothesis"]},
    entry_points={"console_scripts": ["lcmat=lcmat.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
