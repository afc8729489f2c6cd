"""bench/coreset_picks.py: the statistics of the picks (hand-computed on small arrays) and a whole run on a
noisy pool of the bundled digits, whose pool row must show the injected noise rate."""
import sys

import numpy as np
import pytest

from helpers import load_bench_script


@pytest.fixture(scope="module")
def picks():
    return load_bench_script("coreset_picks")


def test_pick_stats_and_mislabelled_share(picks):
    correct = np.array([1, 0, 1, 1], dtype=bool)
    loss = np.array([0.1, 2.0, 0.3, 0.5])
    acc, median, p90 = picks.pick_stats(correct, loss, np.array([0, 1, 2]))
    assert acc == pytest.approx(200 / 3)
    assert median == pytest.approx(0.3)
    assert p90 == pytest.approx(np.percentile([0.1, 2.0, 0.3], 90))
    labels, clean = np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1])
    assert picks.mislabelled_share(labels, clean, np.array([0, 1])) == pytest.approx(50.0)
    assert picks.mislabelled_share(labels, clean, np.array([0, 2])) == pytest.approx(0.0)


def test_pick_table_adds_the_noise_column_only_when_labels_are_noisy(picks):
    correct = np.array([1, 0, 1, 1], dtype=bool)
    loss = np.array([0.1, 2.0, 0.3, 0.5])
    rows = [("pool", np.arange(4)), ("m", np.array([1, 3]))]
    clean_table = picks.pick_table(rows, correct, loss, np.array([0, 1, 1, 0]), np.array([0, 1, 1, 0]))
    assert "mislabelled" not in clean_table
    assert "| m | 50.0 % |" in clean_table
    noisy_table = picks.pick_table(rows, correct, loss, np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]))
    assert noisy_table.splitlines()[0].endswith("mislabelled |")
    assert noisy_table.splitlines()[2].endswith("| 50.0 % |")    # pool: 2 of 4 flipped
    assert noisy_table.splitlines()[3].endswith("| 100.0 % |")   # picks 1 and 3: both flipped
    predicted = picks.pick_table(rows, correct, loss, np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]),
                                 predictions=np.array([0, 0, 1, 0]))
    assert predicted.splitlines()[0].endswith("mislabelled | classified as the clean label |")
    assert predicted.splitlines()[2].endswith("| 50.0 % | 75.0 % |")   # 0, 0, 1 match the clean labels
    assert predicted.splitlines()[3].endswith("| 100.0 % | 50.0 % |")  # pick 1 predicted 0 = clean 0


def test_whole_run_on_a_noisy_pool(picks, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LCMAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["coreset_picks.py", "--dataset", "digits", "--model", "mlp",
                                      "--selection-epochs", "1", "--pool", "100", "--label-noise", "0.4",
                                      "--fraction", "0.2", "--methods", "uniform,herding", "--threads", "1"])
    picks.main()
    out = capsys.readouterr().out
    assert "pool100-ps0-noise0.4-imb1-cs0" in out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].endswith("mislabelled | classified as the clean label |")
    pool_row = next(line for line in lines if line.startswith("| pool"))
    assert "| 40.0 % |" in pool_row   # round(0.4 * 1000) labels flipped
    assert any(line.startswith("| Herding") or line.startswith("| herding") for line in lines)
