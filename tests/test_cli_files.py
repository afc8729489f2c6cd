"""The command line protects files and reads inputs safely: every output-path case and every
unreadable --features input ends in one line on stderr and exit status 2; results.csv survives a
crash mid-row (torn at any byte, --resume repairs it and ends with the uninterrupted table)."""
import os
import pickle
import shutil

import numpy as np
import pytest

import brute_selectors as B
from lcmat.cli import main
from lcmat.experiment import run_experiment
from lcmat.results import RESULTS_FILE, read_results


@pytest.fixture
def feats(tmp_path):
    H, Z, y = B.make_problem([20, 24], D=4, seed=0, nonneg=True)
    path = tmp_path / "feats.npz"
    np.savez(path, embeddings=H.astype(np.float32), logits=Z.astype(np.float32), labels=y)
    return path


def run(args, capsys):
    """(exit status, stderr lines, stdout) of `lcmat ARGS`."""
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, [line for line in captured.err.splitlines() if line.strip()], captured.out


def select(features, out, *more):
    return ["select", "--method", "kcenter", "--fraction", "0.25", "--features", str(features), "--out", str(out),
            "--quiet", *more]


def assert_one_line_error(status, err, *needles):
    assert status == 2, (status, err)
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err


# ---------------------------------------------------------------------------------------------
# --out

def test_out_without_extension_prints_the_path_written(feats, tmp_path, capsys):
    status, err, out = run(select(feats, tmp_path / "noext"), capsys)
    assert status in (0, None) and not err
    assert (tmp_path / "noext.npz").is_file() and not (tmp_path / "noext").exists()
    assert out.rstrip().endswith(f"-> {tmp_path / 'noext.npz'}")


def test_an_existing_out_is_not_overwritten_without_the_flag(feats, tmp_path, capsys):
    target = tmp_path / "coreset.npz"
    target.write_bytes(b"precious")
    status, err, _ = run(select(feats, target), capsys)
    assert_one_line_error(status, err, "lcmat select: --out:", "already exists", "--overwrite")
    assert target.read_bytes() == b"precious"
    status, err, _ = run(select(feats, target, "--overwrite"), capsys)
    assert status in (0, None) and np.load(target)["indices"].shape == (11,)


def test_the_output_path_implied_by_a_missing_extension_is_protected_too(feats, tmp_path, capsys):
    (tmp_path / "c.npz").write_bytes(b"precious")
    status, err, _ = run(select(feats, tmp_path / "c"), capsys)
    assert_one_line_error(status, err, "already exists")
    assert (tmp_path / "c.npz").read_bytes() == b"precious"


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_is_never_the_input(feats, capsys, overwrite):
    before = feats.read_bytes()
    status, err, _ = run(select(feats, feats, *(["--overwrite"] if overwrite else [])), capsys)
    assert_one_line_error(status, err, "--out:", "is the --features input")
    assert feats.read_bytes() == before


def test_out_via_another_spelling_of_the_input_is_refused(feats, tmp_path, capsys):
    other = tmp_path / "sub" / ".." / "feats"
    (tmp_path / "sub").mkdir()
    status, err, _ = run(select(feats, other, "--overwrite"), capsys)
    assert_one_line_error(status, err, "is the --features input")


def test_missing_output_folder_is_found_before_any_work(feats, tmp_path, capsys, monkeypatch):
    import lcmat.cli as cli
    monkeypatch.setattr(cli, "_load_features", lambda path: pytest.fail("read the input before checking --out"))
    status, err, _ = run(select(feats, tmp_path / "nowhere" / "c.npz"), capsys)
    assert_one_line_error(status, err, "--out:", "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder(feats, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        status, err, _ = run(select(feats, folder / "c.npz"), capsys)
    finally:
        folder.chmod(0o700)
    assert_one_line_error(status, err, "--out:", "cannot write")


def test_out_that_is_a_directory(feats, tmp_path, capsys):
    (tmp_path / "d.npz").mkdir()
    status, err, _ = run(select(feats, tmp_path / "d.npz", "--overwrite"), capsys)
    assert_one_line_error(status, err, "--out:", "is a directory")


# ---------------------------------------------------------------------------------------------
# unreadable --features

def _truncated(path, good):
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_zip(path, good):
    path.write_bytes(b"this is not an archive\n" * 10)


def _object_array(path, good):
    np.savez(path, labels=np.array([0, 1], dtype=object), embeddings=np.ones((2, 2)))


def _pickle(path, good):
    path.write_bytes(pickle.dumps({"labels": [0, 1]}))


def _npy(path, good):
    np.save(path.with_suffix(".npy"), np.arange(4))
    os.replace(path.with_suffix(".npy"), path)


def _string_labels(path, good):
    np.savez(path, labels=np.array(["cat", "dog"] * 10), embeddings=np.ones((20, 2)))


def _directory(path, good):
    path.mkdir()


def _no_labels(path, good):
    np.savez(path, embeddings=np.ones((4, 2)))


def _empty_file(path, good):
    path.write_bytes(b"")


@pytest.mark.parametrize("make,needle", [
    (_truncated, "not an .npz"), (_not_zip, "not an .npz"), (_object_array, "cannot be read"),
    (_pickle, "not an .npz"), (_npy, "not an .npz"), (_string_labels, "must hold numbers"),
    (_directory, "is a directory"), (_no_labels, "no 'labels'"), (_empty_file, "not an .npz")])
def test_unreadable_features_end_in_one_line_and_status_2(make, needle, feats, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    make(bad, feats)
    status, err, _ = run(select(bad, tmp_path / "out.npz"), capsys)
    assert_one_line_error(status, err, "lcmat select: --features:", needle)
    assert not (tmp_path / "out.npz").exists()


def test_missing_features_file(tmp_path, capsys):
    status, err, _ = run(select(tmp_path / "missing.npz", tmp_path / "out.npz"), capsys)
    assert_one_line_error(status, err, "lcmat select: --features:", "no such file")


def test_overflowing_features_end_in_one_line(tmp_path, capsys):
    path = tmp_path / "huge.npz"
    np.savez(path, embeddings=np.full((8, 2), 1e300), labels=np.arange(8) % 2)
    status, err, _ = run(select(path, tmp_path / "out.npz"), capsys)
    assert_one_line_error(status, err, "lcmat select: embeddings:")


# ---------------------------------------------------------------------------------------------
# results.csv torn by a crash

SETTINGS = dict(dataset="digits", model="mlp", methods=["uniform"], fractions=[0.1, 0.2], seeds=[0],
                selection_epochs=1, epochs=None, steps=2, evaluations=1, progress=False, log=lambda *a: None)
TIMING = ("selection_seconds", "training_seconds", "date")  # and when the row was written


def table(rows):
    return sorted(tuple((k, v) for k, v in row.items() if k not in TIMING) for row in rows)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    rows = run_experiment(out_dir=out, **SETTINGS)
    return out / RESULTS_FILE, table(rows)


def tear_positions(data):
    """Byte positions to cut at: inside the header, inside each row, and the final newline alone
    (a cut between two lines tears nothing: the rows after it are simply missing)."""
    first_newline = data.index(b"\n")
    row_starts = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")][:-1]
    return sorted({first_newline // 2, *(start + 7 for start in row_starts), len(data) - 1})


def test_a_torn_results_file_is_repaired_by_resume(finished, tmp_path):
    whole_path, whole_table = finished
    data = whole_path.read_bytes()
    for cut in tear_positions(data):
        out = tmp_path / f"cut{cut}"
        out.mkdir()
        (out / RESULTS_FILE).write_bytes(data[:cut])
        if data[cut - 1:cut] == b"\n":  # cut between two lines: nothing is torn
            rows = run_experiment(out_dir=out, resume=True, **SETTINGS)
        else:
            with pytest.warns(RuntimeWarning, match="torn or invalid"):
                rows = run_experiment(out_dir=out, resume=True, **SETTINGS)
        assert table(rows) == whole_table, f"cut at byte {cut}"
        text = (out / RESULTS_FILE).read_bytes()
        assert text.endswith(b"\n") and text.count(b"\n") == data.count(b"\n"), f"cut at byte {cut}"


def test_an_invalid_row_is_skipped_with_a_warning_and_rerun(finished, tmp_path):
    whole_path, whole_table = finished
    lines = whole_path.read_text().splitlines(keepends=True)
    from lcmat.results import RESULT_COLUMNS
    fields = lines[1].rstrip("\n").split(",")
    fields[RESULT_COLUMNS.index("final_acc")] = "not-a-number"
    broken = ",".join(fields) + "\n"
    out = tmp_path / "invalid"
    out.mkdir()
    (out / RESULTS_FILE).write_text(lines[0] + broken + "".join(lines[2:]))
    with pytest.warns(RuntimeWarning, match="skipped 1 torn or invalid row"):
        assert len(read_results(out / RESULTS_FILE)) == len(lines) - 2
    with pytest.warns(RuntimeWarning):
        rows = run_experiment(out_dir=out, resume=True, **SETTINGS)
    assert table(rows) == whole_table


def test_summary_only_survives_a_torn_row(finished, tmp_path, capsys):
    whole_path, _ = finished
    out = tmp_path / "summary"
    out.mkdir()
    data = whole_path.read_bytes()
    (out / RESULTS_FILE).write_bytes(data[:-5])
    with pytest.warns(RuntimeWarning, match="torn"):
        assert main(["experiment", "--out", str(out), "--summary-only"]) == 0
    assert (out / "summary.md").is_file()


def test_rows_are_whole_lines(tmp_path):
    from lcmat.results import RESULT_COLUMNS, append_row
    path = tmp_path / RESULTS_FILE
    row = dict(dataset="digits", model="mlp", method="lcmat", options="a=1, b=2", fraction=0.1, seed=0,
               n_selected=10, weighted=True, selection_model="mlp", protocol="steps", selection_epochs=1, epochs=None, steps=2,
               batch_size=128, lr=0.1, imbalance=1.0, label_noise=0.0, corruption_seed=0, pool=None, pool_seed=None,
               final_acc=50.0, best_acc=51.0, selection_seconds=0.1, training_seconds=0.2, kind="selection",
               augment="none", host="h", date="d")
    assert set(row) == set(RESULT_COLUMNS)
    append_row(path, row)
    append_row(path, row)
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 3 and all(line.endswith("\n") for line in lines)
    shutil.copy(path, tmp_path / "copy.csv")
    assert len(read_results(tmp_path / "copy.csv")) == 2
