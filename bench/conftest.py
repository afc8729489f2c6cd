"""pytest-benchmark configuration of the kernel microbenchmarks (bench/bench_*.py).

Every benchmark is parametrised by a problem size: `tiny` (seconds in all; what `make test` runs
once with --benchmark-disable so that no benchmark rots), `cifar10` and `imagenet` (the shapes of
those data sets; skipped unless asked for with --bench-size). Outside libraries are skipped when
they are not installed (`pip install -e .[bench]`).

    pytest bench --benchmark-only --bench-size=tiny,cifar10 --benchmark-json=out.json
    python bench/report.py out.json                 # the tables of BENCHMARKS.md

At the end of a timed run a table of achieved GFLOP/s and GB/s (from each benchmark's recorded
work, extra_info "flops" and "bytes", and its median time) is printed beside the medians.
"""
import os
import sys

import pytest

# The helpers of the benchmark files (bench/_common.py) import as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

SIZES = ("tiny", "cifar10", "imagenet")


def pytest_addoption(parser):
    parser.addoption("--bench-size", default="tiny",
                     help="comma-separated sizes to run: tiny, cifar10, imagenet, or all "
                          "(default: tiny)")


def _chosen_sizes(config):
    text = config.getoption("--bench-size")
    sizes = SIZES if text == "all" else tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise pytest.UsageError(f"--bench-size: unknown sizes {unknown}; choose from {SIZES} or all")
    return sizes


def pytest_collection_modifyitems(config, items):
    sizes = _chosen_sizes(config)
    for item in items:
        size = getattr(item, "callspec", None) and item.callspec.params.get("size")
        if size and size not in sizes:
            item.add_marker(pytest.mark.skip(reason=f"size {size}: run with --bench-size={size}"))


@pytest.fixture(autouse=True)
def bench_threads():
    """Every benchmark runs on LCMAT_BENCH_THREADS torch threads (default 1): on a shared
    machine one thread is disturbed least, and ratios are what the tables report."""
    import torch
    from _common import THREADS
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    rows = []
    for bench in getattr(session, "benchmarks", None) or []:
        stats = getattr(bench, "stats", None)
        if stats is None or not getattr(stats, "rounds", 0):
            continue
        median = stats.median
        info = bench.extra_info
        gflops = info.get("flops", 0) / median / 1e9 if median > 0 else 0.0
        gbs = info.get("bytes", 0) / median / 1e9 if median > 0 else 0.0
        rows.append((bench.fullname.split("::")[-1], median, gflops, gbs))
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write(f"{'benchmark':<72} {'median (ms)':>12} {'GFLOP/s':>9} {'GB/s':>8}")
    for name, median, gflops, gbs in rows:
        write(f"{name[:72]:<72} {median * 1e3:>12.3f} {gflops:>9.2f} {gbs:>8.2f}")
