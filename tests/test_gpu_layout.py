"""The GPU run's non-GPU steps, in the layout the GPU machine receives.

The device tool sends a copy of the work tree (tracked files and untracked ones that git does not
ignore) with nothing installed; bench/gpu_check.sh builds the extension in place and sets
PYTHONPATH to the root. A local editable install (its .pth finder) would hide anything that only
an install provides, so this copies the tree as the tool does, adds the extension built here, and
runs `bench/gpu_check.sh --dry-run` there under `python -S` (no site-packages .pth files are read;
the interpreter's packages are on PYTHONPATH instead): imports, build discovery, collection of
every GPU test module and the benchmark commands' argument parsing must all pass.
"""
import glob
import os
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_files():
    """What the device tool copies: tracked files and untracked files git does not ignore."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def _device_copy(dest):
    for rel in _tree_files():
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))
    built = glob.glob(os.path.join(ROOT, "lcmat", "_C*.so")) + glob.glob(os.path.join(ROOT, "lcmat", "_C*.pyd"))
    if not built:
        pytest.skip("the extension lcmat._C is not built here")
    for path in built:
        shutil.copy2(path, os.path.join(dest, "lcmat"))


def _bare_environment():
    """PYTHONPATH = the interpreter's package folders only (with -S, no .pth file runs: an
    editable install of lcmat is invisible); no variable that the GPU machine would not have."""
    packages = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                            *site.getsitepackages()} if os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TRITON_INTERPRET", "LCMAT_BACKEND", "HYPOTHESIS_PROFILE",
                        "LCMAT_TRITON_GPU_TYPING", "LCMAT_TRITON_FIXED_CONFIG")}
    env["PYTHONPATH"] = os.pathsep.join(sorted(packages))
    return env


def test_bare_python_cannot_see_an_install(tmp_path):
    """The isolation itself: under -S with only the package folders, lcmat is not importable
    outside a tree (so the dry run below can only pass through the copy's own files)."""
    env = _bare_environment()
    code = "import importlib.util as u; print(u.find_spec('lcmat'))"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None", out.stdout


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_dry_run_in_the_device_layout(tmp_path):
    tree = tmp_path / "tree"
    _device_copy(str(tree))
    out_dir = tmp_path / "out"
    env = _bare_environment()
    env.update(OUT=str(out_dir), PY=f"{sys.executable} -S")
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=tree, env=env,
                            capture_output=True, text=True, timeout=600)
    summary = (out_dir / "summary.txt").read_text() if (out_dir / "summary.txt").exists() else ""
    assert result.returncode == 0, summary + result.stdout + result.stderr
    for name in ("imports", "collect", "bench_arguments"):
        assert f"== {name}:" in summary, summary
    assert "FAILED" not in summary, summary
    # the modules came from the copy, not from an install
    assert str(tree) in summary or os.path.realpath(str(tree)) in summary, summary
    # every GPU test module collected, with no error (pytest's exit status is checked too)
    collected = summary.split("== collect")[1].split("== bench_arguments")[0]
    assert "ERROR" not in collected and "tests/test_sinkhorn.py: " in collected, summary
    # at most 8 files come back from $OUT
    assert len(os.listdir(out_dir)) <= 8
