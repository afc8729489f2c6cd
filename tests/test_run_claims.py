"""bench/results/claims/run_claims.sh's folder locks: two lines given the same stages never run one folder
at once and leave no lock behind, a lock file left by a killed line does not block, and a folder whose
lock is held is skipped. The experiments are replaced by a fake interpreter that records when it ran
which folder."""
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "results" / "claims" / "run_claims.sh"
STAGE_4 = ["coverage-fm-pool1000", "coverage-c10-pool1000", "coverage-mnist-pool1000-heldout"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock(1) is util-linux's")


@pytest.fixture()
def fake(tmp_path):
    log = tmp_path / "calls.log"
    py = tmp_path / "fake-python"
    # Records "<folder name> <start ns> <end ns>" for every experiment, which takes a second.
    py.write_text(f'#!/usr/bin/env bash\nwhile [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done\n'
                  f'start=$(date +%s%N); sleep 1\necho "$(basename "$out") $start $(date +%s%N)" >> {log}\n')
    py.chmod(0o755)
    env = dict(os.environ, PY=str(py), OUT=str(tmp_path / "runs"), NICE="0", STAGES="4")
    return env, log


def calls(log):
    """[(folder, start, end)] in the order the runs ended."""
    return [(name, int(start), int(end)) for name, start, end in
            (line.split() for line in log.read_text().splitlines())]


def test_two_lines_never_run_one_folder_at_once(fake):
    env, log = fake
    lines = [subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in lines]
    assert all(p.returncode == 0 for p in lines)
    runs = calls(log)
    assert sorted({name for name, _, _ in runs}) == sorted(STAGE_4)   # every folder ran
    for folder in STAGE_4:
        spans = sorted((start, end) for name, start, end in runs if name == folder)
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), folder  # one at a time
    skipped = sum(o.count("skipped, another line") for o in outputs)
    assert skipped + len(runs) == 2 * len(STAGE_4)   # each line either ran or skipped each folder
    locks = Path(env["OUT"]) / ".locks"
    for folder in STAGE_4:  # no lock is left held: each can be taken at once
        with open(locks / f"{folder}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_lock_file_left_by_a_killed_line_does_not_block(fake):
    env, log = fake
    locks = Path(env["OUT"]) / ".locks"
    locks.mkdir(parents=True)
    (locks / f"{STAGE_4[0]}.lock").write_text("999999999\n")  # its holder is gone, so is its flock
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert [name for name, _, _ in calls(log)] == STAGE_4
    assert "skipped" not in out.stdout


def test_a_held_folder_is_skipped_and_its_holder_named(fake):
    env, log = fake
    locks = Path(env["OUT"]) / ".locks"
    locks.mkdir(parents=True)
    with open(locks / f"{STAGE_4[1]}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)   # this test process plays the other line
        handle.write("4242\n")
        handle.flush()
        out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert [name for name, _, _ in calls(log)] == [STAGE_4[0], STAGE_4[2]]
    assert f"{STAGE_4[1]}: skipped, another line (process 4242) runs it" in out.stdout
