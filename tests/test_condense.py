"""lcmat.condense: the matching losses against their definitions (per-sample autograd), DSA and
multi-formation, the loop (loss goes down, reproducible, resumable), persistence and the CLI.
Tiny images and widths: every test takes seconds."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lcmat import ops
from lcmat.condense import (DC, DM, DSA, CondensedSet, DSAAugment, LCMatC, RandomReal, decode, dm_loss,
                            encode_mix, lcmat_c_loss, network_gradient_matching_loss)
from lcmat.condense.methods import RealData
from helpers import PairDataset

pytestmark = pytest.mark.usefixtures("one_thread")
BACKENDS = ["reference"] + [b for b in ("cpu",) if b in ops.available_backends()]


def _batches(seed=0, C=3, D=5, n_real=9, n_syn=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h_r = torch.randn(n_real, D, generator=g, dtype=dtype)
    y_r = torch.arange(n_real) % C
    h_s = torch.randn(n_syn, D, generator=g, dtype=dtype, requires_grad=True)
    y_s = torch.arange(n_syn) % C
    fc = nn.Linear(D, C).to(dtype)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(C, D, generator=g, dtype=dtype))
        fc.bias.copy_(torch.randn(C, generator=g, dtype=dtype))
    return fc, h_r, y_r, h_s, y_s


def _per_sample_grads(fc, h, y, create_graph):
    """Each sample's gradient of its own cross-entropy with respect to (bias, weight) by autograd."""
    rows = []
    for i in range(len(y)):
        loss = F.cross_entropy(fc(h[i:i + 1]), y[i:i + 1])
        gb, gw = torch.autograd.grad(loss, (fc.bias, fc.weight), create_graph=create_graph)
        rows.append(torch.cat([gb, gw.reshape(-1)]))
    return torch.stack(rows)


def _brute_lcmat_c(fc, h_r, y_r, h_s, y_s, rho, metric):
    G_r = _per_sample_grads(fc, h_r, y_r, False).detach()
    G_s = _per_sample_grads(fc, h_s, y_s, True)
    C = fc.out_features
    total = 0.0
    for c in range(C):
        gr, gs = G_r[y_r == c], G_s[y_s == c]
        mr, ms = gr.mean(0), gs.mean(0)
        if metric == "mse":
            d = ((mr - ms) ** 2).sum()
        elif metric == "l1":
            d = (mr - ms).abs().sum()
        else:
            a, b = mr[C:].reshape(C, -1), ms[C:].reshape(C, -1)
            d = (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)).sum()
        var_gap = (gr.var(0, unbiased=False) - gs.var(0, unbiased=False)).abs().sum()
        total = total + d + 0.5 * rho * var_gap
    return total


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["mse", "l1", "cos"])
@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_lcmat_c_loss_is_its_per_sample_definition(backend, metric, rho):
    fc, h_r, y_r, h_s, y_s = _batches()
    loss = lcmat_c_loss(h_r, fc(h_r), y_r, h_s, fc(h_s), y_s, rho, metric, backend)
    brute = _brute_lcmat_c(fc, h_r, y_r, h_s, y_s, rho, metric)
    torch.testing.assert_close(loss, brute, atol=1e-10, rtol=1e-9)
    (g,) = torch.autograd.grad(loss, h_s)
    (g_brute,) = torch.autograd.grad(brute, h_s)
    torch.testing.assert_close(g, g_brute, atol=1e-9, rtol=1e-7)


def test_rho_zero_is_plain_last_layer_gradient_matching():
    """rho = 0: the distance between the gradients of the mean cross-entropy of each class's real
    and synthetic batches (what gradient matching differentiates), here on the last layer."""
    fc, h_r, y_r, h_s, y_s = _batches(seed=3)
    loss = lcmat_c_loss(h_r, fc(h_r), y_r, h_s, fc(h_s), y_s, 0.0, "mse")
    expected = 0.0
    for c in range(fc.out_features):
        gr = torch.autograd.grad(F.cross_entropy(fc(h_r[y_r == c]), y_r[y_r == c]), (fc.bias, fc.weight))
        gs = torch.autograd.grad(F.cross_entropy(fc(h_s[y_s == c]), y_s[y_s == c]), (fc.bias, fc.weight))
        expected = expected + sum(((a - b) ** 2).sum() for a, b in zip(gr, gs))
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-9)
    assert lcmat_c_loss(h_r, fc(h_r), y_r, h_s, fc(h_s), y_s, 2.0, "mse") > loss


def test_dm_loss_is_its_formula():
    g = torch.Generator().manual_seed(0)
    e_r, e_s = torch.randn(12, 4, generator=g), torch.randn(6, 4, generator=g)
    y_r, y_s = torch.arange(12) % 3, torch.tensor([0, 0, 1, 1, 2, 2])
    expected = sum(((e_r[y_r == c].mean(0) - e_s[y_s == c].mean(0)) ** 2).sum() for c in range(3))
    torch.testing.assert_close(dm_loss(e_r, y_r, e_s, y_s), expected)


def test_network_gradient_matching_is_dc_distance():
    """DC's distance: per class, per weight tensor, sum over output rows of 1 - cos (eps 1e-6 in
    the denominator, biases not matched); identical batches leave only the eps terms."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.arange(6) % 3
    xs = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    expected = 0.0
    for c in range(3):
        gr = torch.autograd.grad(F.cross_entropy(model(x[y == c]), y[y == c]), list(model.parameters()))
        gs = torch.autograd.grad(F.cross_entropy(model(xs[y == c]), y[y == c]), list(model.parameters()))
        for a, b in zip(gr, gs):
            if a.dim() > 1:
                expected += (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)).sum()
    torch.testing.assert_close(network_gradient_matching_loss(model, x, y, xs, y), expected)
    assert network_gradient_matching_loss(model, x, y, x.clone(), y) < 0.1 * expected


def test_dsa_is_siamese_and_seeded():
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(5, 3, 12, 12, generator=g), torch.randn(4, 3, 12, 12, generator=g)
    for strategy in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        aug = DSAAugment(strategy, batch=True)
        params = aug.sample(1, torch.Generator().manual_seed(7))
        both = aug.apply(torch.cat([real, syn]), params)
        torch.testing.assert_close(both[:5], aug.apply(real, params))
        torch.testing.assert_close(both[5:], aug.apply(syn, params))
    aug = DSAAugment()
    a = aug(real, torch.Generator().manual_seed(1))
    b = aug(real, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    outs = [DSAAugment(mode="all")(real, torch.Generator().manual_seed(s)) for s in range(3)]
    assert not torch.equal(outs[0], outs[1])


def test_dsa_operations_are_differentiable_and_exact_where_they_should_be():
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    out = DSAAugment(mode="all", batch=False)(x, torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.abs().sum() > 0
    flip = DSAAugment("flip", flip=1.0)
    torch.testing.assert_close(flip.apply(x, flip.sample(1)), x.flip(3))
    crop = DSAAugment("crop")
    p = crop.sample(1)
    p["shift_x"], p["shift_y"] = torch.tensor([0.0]), torch.tensor([0.5])  # dx = -1, dy = 0
    shifted = crop.apply(x, p)
    torch.testing.assert_close(shifted[..., 1:], x[..., :-1])
    assert shifted[..., 0].abs().max() == 0


def test_decode_tiles_and_encode_mix_round_trip():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    dec, lab = decode(x, torch.tensor([3, 4]), 2)
    assert dec.shape == (8, 1, 4, 4) and lab.tolist() == [3, 4] * 4
    # a constant tile decodes to a constant image
    const = torch.zeros(1, 1, 4, 4)
    const[..., :2, 2:] = 5.0
    dec, _ = decode(const, torch.tensor([0]), 2)
    torch.testing.assert_close(dec[1], torch.full((1, 4, 4), 5.0))
    torch.testing.assert_close(dec[0], torch.zeros(1, 4, 4))
    blocks = torch.stack([torch.full((1, 6, 6), float(v)) for v in range(4)])
    dec, _ = decode(encode_mix(blocks, 2)[None], torch.tensor([0]), 2)
    torch.testing.assert_close(dec, blocks)
    dec3, _ = decode(torch.randn(1, 1, 8, 8), torch.tensor([0]), 3)  # 3 does not divide 8: padded
    assert dec3.shape == (9, 1, 8, 8)


def _tiny_data(n_per_class=6, C=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 1, size, size, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


KW = dict(width=4, batch_real=6, progress=False)


def test_condensation_lowers_the_matching_loss():
    """One network (iterations=1), no training, no augmentation, the whole of each class in every
    real batch: the loss is a fixed function of the synthetic images and SGD lowers it."""
    x, y = _tiny_data()
    for method in (LCMatC(2, rho=1.0, iterations=1, outer_loop=25, net_steps=0, dsa=False, lr_img=0.5, **KW),
                   DM(2, iterations=1, outer_loop=25, dsa=False, lr_img=20.0, **KW)):
        model = method.build_network(RealData(x, y), 0)
        out = method.condense(x, y)
        losses = []
        for images in (method.initial_images(RealData(x, y))[0], out.images):
            syn, ys = decode(images, out.labels, method.factor)
            losses.append(float(method.matching_loss(model, x, y, syn, ys).detach()))
        assert losses[1] < 0.7 * losses[0], (method.name, losses)


@pytest.mark.parametrize("cls", [LCMatC, DSA, DM])
def test_condensation_is_reproducible_and_resumable(cls):
    x, y = _tiny_data()
    kw = dict(KW, iterations=3, checkpoint_every=1)
    if cls is not DM:
        kw.update(outer_loop=2, net_steps=1)
    a = cls(1, seed=5, **kw).condense(x, y)
    b = cls(1, seed=5, **kw).condense(x, y)
    c = cls(1, seed=6, **kw).condense(x, y)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    states = []
    cls(1, seed=5, **dict(kw, iterations=1)).condense(x, y, on_checkpoint=lambda s, _: states.append(s))
    resumed = cls(1, seed=5, **kw).condense(x, y, resume=states[-1])
    torch.testing.assert_close(resumed.images, a.images, atol=1e-6, rtol=0)
    assert [h["iteration"] for h in resumed.history] == [1, 2, 3]


def test_random_real_picks_real_images_per_class():
    x, y = _tiny_data()
    out = RandomReal(2, seed=1).condense(x, y)
    assert out.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for img, lab in zip(out.images, out.labels):
        assert any(torch.equal(img, xi) for xi in x[y == lab])


def test_save_load_round_trip_and_dataset(tmp_path):
    x, y = _tiny_data()
    out = LCMatC(1, iterations=2, outer_loop=1, net_steps=0, **KW).condense(x, y, meta={"dataset": "toy"})
    path = out.save(str(tmp_path / "syn.pt"))
    back = CondensedSet.load(path)
    assert torch.equal(back.images, out.images) and torch.equal(back.labels, out.labels)
    assert back.factor == 2 and back.history == out.history and back.meta == out.meta
    data = back.dataset()
    assert len(data) == 4 * len(out) and data[0][0].shape == (1, 8, 8)
    result = back.evaluate(PairDataset(x, y), width=4, epochs=2, progress=False)
    assert 0 <= result["final_acc"] <= 100




def test_bad_arguments_raise():
    x, y = _tiny_data()
    with pytest.raises(ValueError, match="rho"):
        LCMatC(1, rho=-1)
    with pytest.raises(ValueError, match="images_per_class"):
        DC(0)
    with pytest.raises(ValueError, match="labels"):
        LCMatC(1, **KW).condense(x)
    with pytest.raises(ValueError, match="metric"):
        LCMatC(1, metric="l3")
    with pytest.raises(ValueError, match="net_steps"):
        DM(1, net_steps=3)


def test_cli_condense_digits_checkpoint_resume_and_png(tmp_path, monkeypatch):
    from lcmat import cli
    from lcmat.condense import cli as ccli

    args = ["condense", "--method", "lcmat-c", "--dataset", "digits", "--ipc", "1", "--iterations", "3",
            "--width", "4", "--checkpoint-every", "1", "--no-evaluate", "--no-progress", "--threads", "1"]
    full = tmp_path / "full"
    cli.main(args + ["--out", str(full)])
    for name in ("checkpoint.pt", "loss.csv", "synthetic.pt", "synthetic.png", "result.json"):
        assert (full / name).exists(), name
    rows = (full / "loss.csv").read_text().strip().splitlines()
    assert rows[0] == "iteration,loss,seconds" and len(rows) == 4
    assert (full / "synthetic.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="--overwrite"):
        cli.main(args + ["--out", str(full)])

    # interrupted after the first checkpoint, then resumed: the same result as the full run
    part = tmp_path / "part"
    real_write = ccli.write_loss_csv

    def interrupt(path, history):
        real_write(path, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(ccli, "write_loss_csv", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args + ["--out", str(part)])
    monkeypatch.setattr(ccli, "write_loss_csv", real_write)
    assert not (part / "synthetic.pt").exists()
    cli.main(args + ["--out", str(part), "--resume"])
    a, b = CondensedSet.load(str(full / "synthetic.pt")), CondensedSet.load(str(part / "synthetic.pt"))
    torch.testing.assert_close(a.images, b.images, atol=1e-6, rtol=0)
    assert json.loads((part / "result.json").read_text())["method"] == "lcmat-c"
    with pytest.raises(SystemExit, match="other settings"):
        os.remove(part / "result.json")
        cli.main(args[:8] + ["4"] + args[9:] + ["--out", str(part), "--resume"])


# --------------------------------------------------------------------------------------------------
# lcmat experiment's condensation rows (lcmat.condense.experiment)
# --------------------------------------------------------------------------------------------------

def test_condensation_ipc_is_the_selectors_per_class_budget():
    from lcmat.condense.experiment import condensation_ipc

    assert condensation_ipc([6000] * 10, 1 / 6000) == 1 and condensation_ipc([6000] * 10, 1 / 600) == 10
    assert condensation_ipc([5000] * 10, 0.002) == 10  # CIFAR-10 at 0.2 %: the paper's 10 per class
    assert condensation_ipc([100, 100, 101], 0.05) == 5  # round(5.05) = 5 for every class
    assert condensation_ipc([100, 100, 102], 0.025) is None  # round(2.5) = 2 but round(2.55) = 3
    with pytest.raises(ValueError, match="gives class 0"):
        condensation_ipc([10, 1000], 0.01)


def test_learn_condensed_continues_an_interrupted_run_and_caches(tmp_path, monkeypatch):
    from lcmat.condense import experiment as cexp
    from lcmat.condense.methods import Condenser
    from lcmat.data import load_dataset
    from lcmat.methods import MethodSpec

    train = load_dataset("digits", "train")
    spec = MethodSpec("lcmat_c", {"iterations": 3, "width": 4, "outer_loop": 2, "net_steps": 1, "batch_real": 4,
                                  "batch_net": 16})
    real_get = cexp.get_condenser

    def every_iteration(*args, **kwargs):
        condenser = real_get(*args, **kwargs)
        condenser.checkpoint_every = 1
        return condenser

    monkeypatch.setattr(cexp, "get_condenser", every_iteration)
    quiet = dict(log=lambda *a: None)
    full, _, cached = cexp.learn_condensed(spec, 2, train, "digits", 0, tmp_path / "full", **quiet)
    assert not cached and len(full) == 20 and len(full.dataset) == 80  # factor 2: 4 decoded per stored

    original = Condenser.condense

    def interrupted(self, data, labels=None, resume=None, on_checkpoint=None, meta=None):
        def stop(state, partial):
            on_checkpoint(state, partial)
            raise KeyboardInterrupt
        return original(self, data, labels, resume, stop, meta)

    monkeypatch.setattr(Condenser, "condense", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cexp.learn_condensed(spec, 2, train, "digits", 0, tmp_path / "part", **quiet)
    monkeypatch.setattr(Condenser, "condense", original)
    folder = tmp_path / "part" / "condensed"
    assert [p.name for p in folder.iterdir()] == [
        "digits-lcmat_c-batch_net=16_batch_real=4_iterations=3_net_steps=1_outer_loop=2_width=4-ipc2-s0.checkpoint.pt"]
    logged = []
    part, _, cached = cexp.learn_condensed(spec, 2, train, "digits", 0, tmp_path / "part", log=logged.append)
    assert not cached and "continuing lcmat_c at outer iteration 1" in logged[0]
    torch.testing.assert_close(part.condensed.images, full.condensed.images, atol=1e-6, rtol=0)
    assert len(list(folder.iterdir())) == 1  # the checkpoint is gone once the set is saved

    again, seconds, cached = cexp.learn_condensed(spec, 2, train, "digits", 0, tmp_path / "part", **quiet)
    assert cached and seconds > 0
    torch.testing.assert_close(again.condensed.images, part.condensed.images, atol=0, rtol=0)
    other, _, cached = cexp.learn_condensed(spec, 2, train, "digits", 1, tmp_path / "part", **quiet)
    assert not cached and not torch.equal(other.condensed.images, part.condensed.images)  # another seed


def test_cpu_preset_moves_lcmat_c_images_at_10_per_class():
    """The cpu preset's image learning rate lets LCMat-C's stored images leave their initialisation.
    At 10 images per class each image's gradient is a 1/40 share of its class's mean (factor 2), and
    with IDC's rate x 10 (the preset before) a whole 40-iteration run moved the images by well under
    1 % (relative L2): the learnt set was its initialisation, below random real images. Two matching
    steps must move them by more than 0.1 % (IDC's rate x 10: about 0.01 %)."""
    from pathlib import Path

    from lcmat.condense import preset_config
    from lcmat.data import default_data_dir, load_dataset

    data_dir = default_data_dir()
    if data_dir is None or not (Path(data_dir) / "fashion-mnist").is_dir():
        pytest.skip("offline data directory 'fashion-mnist' not available (set LCMAT_DATA_DIR)")
    train = load_dataset("fashion-mnist", "train")
    config, _ = preset_config("lcmat-c", "cpu", "fashion-mnist", 10)
    condenser = LCMatC(10, seed=0, progress=False, **dict(config, iterations=1, outer_loop=2))
    start, _ = condenser.initial_images(RealData(train))
    learnt = condenser.condense(train).images
    assert float((learnt - start).norm() / start.norm()) > 1e-3
