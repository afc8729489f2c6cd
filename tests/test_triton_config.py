"""The Triton kernels' configs: pinned where picks depend on them, one each for the GPU test run."""
import importlib

import pytest

pytest.importorskip("triton")
from lcmat.triton_kernels import _config  # noqa: E402

LD = importlib.import_module("lcmat.triton_kernels.lcmat_distance")  # the package's name is the function


def test_distance_tiles_are_pinned():
    """The distance blocks (and pairwise L1) feed the greedy's picks: one GPU config, so their
    summation order, and the picks at near-ties, are the same in every process."""
    tiles = LD._TILE_CONFIGS
    assert len(tiles["gpu"]) == len(tiles["warps"]) == len(tiles["stages"]) == 1


@pytest.mark.parametrize("fixed", [False, True])
def test_fixed_config_switch_keeps_one_config(monkeypatch, fixed):
    """LCMAT_TRITON_FIXED_CONFIG=1 (read at import) leaves every autotuned kernel its first GPU
    config: no benchmarking, one compilation per specialisation."""
    monkeypatch.setattr(_config, "INTERPRET", False)
    monkeypatch.setattr(_config, "FIXED_CONFIG", fixed)
    gpu = [{"BLOCK": 64}, {"BLOCK": 128}]
    configs = _config.autotune_configs(gpu, {"BLOCK": 16}, warps=(4, 8), stages=(2, 3))
    assert len(configs) == (1 if fixed else 8)
    assert configs[0].kwargs == {"BLOCK": 64} and configs[0].num_warps == 4 and configs[0].num_stages == 2
