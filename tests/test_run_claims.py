"""bench/results/claims/run_claims.sh's folder locks: two lines given the same stages run each folder
once between them, and a lock left by a killed line is taken over. The experiments are replaced by a
fake interpreter that records the folder it was given and sleeps."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "results" / "claims" / "run_claims.sh"
STAGE_4 = ["coverage-fm-pool1000", "coverage-c10-pool1000", "coverage-mnist-pool1000-heldout"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the locks read /proc")


@pytest.fixture()
def fake(tmp_path):
    log = tmp_path / "calls.log"
    py = tmp_path / "fake-python"
    # Records "<folder name> <line's pid>" for every experiment, then takes a second.
    py.write_text(f'#!/usr/bin/env bash\nwhile [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done\n'
                  f'echo "$(basename "$out") $PPID" >> {log}\nsleep 1\n')
    py.chmod(0o755)
    env = dict(os.environ, PY=str(py), OUT=str(tmp_path / "runs"), NICE="0", STAGES="4")
    return env, log


def calls(log):
    return [line.split()[0] for line in log.read_text().splitlines()]


def test_two_lines_share_a_stage_and_never_run_one_folder_twice(fake):
    env, log = fake
    lines = [subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in lines]
    assert all(p.returncode == 0 for p in lines)
    assert sorted(calls(log)) == sorted(STAGE_4)          # each folder once, between the two lines
    assert sum(o.count("skipped, another line") for o in outputs) == len(STAGE_4)
    assert not any((Path(env["OUT"]) / ".locks").iterdir())  # every lock released


def test_a_lock_left_by_a_killed_line_is_taken_over(fake):
    env, log = fake
    stale = Path(env["OUT"]) / ".locks" / STAGE_4[0]
    stale.mkdir(parents=True)
    (stale / "pid").write_text(f"{os.getpid()}\n")  # a live process, but not a line of the script
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert calls(log) == STAGE_4
    assert "skipped" not in out.stdout
