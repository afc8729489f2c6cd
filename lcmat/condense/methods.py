"""Condensation methods in one loop: LCMat-C, DC, DSA, DM, and random real images.

The loop (IDC's, with DC's and DM's as special cases), for outer iteration t = 0 .. iterations-1:

    network   ConvNet-3 (instance norm, average pooling), re-initialised (seeded by (seed, t))
    repeat outer_loop times (matching steps on this network):
        real batch   batch_real random images of every class
        synthetic    the stored images decoded by multi-formation (factor), all classes
        augment      one DSA draw applied to both (Siamese), when the method uses DSA
        loss         the method's matching loss, summed over classes (losses.py)
        step         SGD with momentum on the stored synthetic images
        network      net_steps SGD steps on the synthetic set (net_data="synthetic", DC/DSA)
                     or on random real batches (net_data="real", IDC), DSA per image
    clamp the synthetic images to the range of real pixels (IDC)

Because ConvNet-3's instance norm normalises each image on its own, one forward pass over the
batch of all classes gives the same features as a pass per class. DM never trains its network
(outer_loop 1, net_steps 0). Every random draw comes from generators seeded by (seed, t), so a run
is reproducible and a resumed run continues exactly where a checkpoint left it.
"""
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models import get_model
from ..validation import check_positive
from .augment import DSA as DSAAugment
from .decode import check_factor, decode, encode_mix
from .losses import check_metric, dm_loss, lcmat_c_loss, network_gradient_matching_loss
from .synthetic import CondensedSet

__all__ = ["Condenser", "LCMatC", "DC", "DSA", "DM", "RandomReal", "CONDENSERS", "get_condenser"]


def _seed(seed, *parts):
    """A 63-bit seed from a base seed and loop counters (distinct streams for distinct parts)."""
    s = int(seed) & 0xFFFFFFFF
    for p in parts:
        s = (s * 1000003 + int(p) + 1) % (2 ** 63 - 1)
    return s


class RealData:
    """The real training set, by class: ArrayDataset-like (get_batch) or tensors."""

    def __init__(self, data, labels=None):
        if isinstance(data, torch.Tensor) or isinstance(data, np.ndarray):
            if labels is None:
                raise ValueError("labels: needed when the data are given as a tensor of images")
            images = torch.as_tensor(data).float()
            if images.dim() != 4:
                raise ValueError(f"data: expected images [N, C, H, W], got shape {tuple(images.shape)}")
            self.images = images
            self.targets = torch.as_tensor(labels).long().cpu().numpy()
            if self.targets.shape != (len(images),):
                raise ValueError(f"labels: expected {len(images)} labels, got shape {self.targets.shape}")
            self.dataset = None
        else:
            if labels is not None:
                raise ValueError("labels: give labels only with a tensor of images (a dataset has its own)")
            if not hasattr(data, "get_batch") or not hasattr(data, "targets"):
                raise ValueError(f"data: expected an ArrayDataset (lcmat.data) or a tensor of images, got "
                                 f"{type(data).__name__}")
            self.dataset, self.images = data, None
            self.targets = np.asarray(data.targets, dtype=np.int64)
        if len(self.targets) == 0:
            raise ValueError("data: is empty")
        if self.targets.min() < 0:
            raise ValueError("labels: must be non-negative")
        self.num_classes = int(getattr(data, "num_classes", 0) or 0) or int(self.targets.max()) + 1
        self.members = [np.flatnonzero(self.targets == c) for c in range(self.num_classes)]
        empty = [c for c, m in enumerate(self.members) if len(m) == 0]
        if empty:
            raise ValueError(f"data: classes {empty} have no images")
        first = self.get(np.array([0]))[0]
        self.shape = tuple(first.shape[1:])
        self.mean = getattr(self.dataset, "mean", None)  # ArrayDataset's normalisation (tensors: none)
        self.std = getattr(self.dataset, "std", None)

    def get(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return self.images[torch.as_tensor(indices)], torch.as_tensor(self.targets[indices])
        x, y = self.dataset.get_batch(indices, apply_transform=False)
        return x.float(), y.long()

    def sample(self, per_class, generator):
        """per_class random images of every class (without replacement within a class when it has
        enough): (x, y) with the classes in order."""
        picks = []
        for m in self.members:
            if len(m) >= per_class:
                order = torch.randperm(len(m), generator=generator)[:per_class].numpy()
            else:
                order = torch.randint(len(m), (per_class,), generator=generator).numpy()
            picks.append(m[order])
        return self.get(np.concatenate(picks))

    def pixel_range(self):
        """(low, high) [C] of normalised values that pixels 0 and 1 map to (or None, None)."""
        if self.mean is None or self.std is None:
            return None, None
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        return (0.0 - mean) / std, (1.0 - mean) / std


class Condenser:
    """The shared loop. Subclasses set the loss (``matching_loss``) and their defaults.

    images_per_class: stored synthetic images per class (each decodes into factor^2).
    iterations: outer iterations (a fresh network each). outer_loop: matching steps per network.
    net_steps: network SGD steps after each matching step (not after the last). net_data:
    "synthetic" or "real". batch_real: real images per class per step. batch_net: batch of the
    network updates on real data. lr_img, momentum_img: the images' SGD. lr_net, momentum_net,
    weight_decay_net: the network's SGD. width: ConvNet-3 channels. dsa: apply DSA (matching and
    network updates). init: "real" (random real images; IDC's "mix" tiles for factor > 1) or
    "noise". checkpoint_every: call on_checkpoint every so many outer iterations.
    """

    name = "condenser"
    uses_network_training = True

    def __init__(self, images_per_class, iterations=200, factor=1, outer_loop=10, net_steps=10,
                 net_data="synthetic", batch_real=128, batch_net=128, lr_img=0.1, momentum_img=0.5,
                 lr_net=0.01, momentum_net=0.9, weight_decay_net=5e-4, width=128, dsa=True,
                 dsa_strategy=None, init="real", seed=0, device="cpu", progress=True, checkpoint_every=10):
        self.images_per_class = int(check_positive("images_per_class", images_per_class, integer=True))
        self.iterations = int(check_positive("iterations", iterations, integer=True, allow_zero=True))
        self.factor = check_factor(factor)
        self.outer_loop = int(check_positive("outer_loop", outer_loop, integer=True))
        self.net_steps = int(check_positive("net_steps", net_steps, integer=True, allow_zero=True))
        if net_data not in ("synthetic", "real"):
            raise ValueError(f"net_data: expected 'synthetic' or 'real', got {net_data!r}")
        self.net_data = net_data
        self.batch_real = int(check_positive("batch_real", batch_real, integer=True))
        self.batch_net = int(check_positive("batch_net", batch_net, integer=True))
        self.lr_img = float(check_positive("lr_img", lr_img))
        self.momentum_img = float(momentum_img)
        self.lr_net = float(check_positive("lr_net", lr_net))
        self.momentum_net, self.weight_decay_net = float(momentum_net), float(weight_decay_net)
        self.width = int(check_positive("width", width, integer=True))
        self.dsa = bool(dsa)
        self.dsa_strategy = dsa_strategy
        if init not in ("real", "noise"):
            raise ValueError(f"init: expected 'real' or 'noise', got {init!r}")
        self.init = init
        self.seed = int(seed)
        self.device = torch.device(device)
        self.progress = bool(progress)
        self.checkpoint_every = int(check_positive("checkpoint_every", checkpoint_every, integer=True))

    # -- configuration ------------------------------------------------------------------------
    def config(self):
        keys = ("images_per_class", "iterations", "factor", "outer_loop", "net_steps", "net_data", "batch_real",
                "batch_net", "lr_img", "momentum_img", "lr_net", "momentum_net", "weight_decay_net", "width", "dsa",
                "dsa_strategy", "init", "seed")
        out = {k: getattr(self, k) for k in keys}
        out.update(self.extra_config())
        return out

    def extra_config(self):
        return {}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    # -- pieces -------------------------------------------------------------------------------
    def matching_augment(self):
        if not self.dsa:
            return None
        return DSAAugment(self.dsa_strategy or "color_crop_cutout_flip_scale_rotate", batch=True)

    def network_augment(self):
        if not self.dsa:
            return None
        return DSAAugment(self.dsa_strategy or "color_crop_cutout_flip_scale_rotate", batch=False)

    def build_network(self, real, t):
        C, H, W = real.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(self.seed, 1, t))
            model = get_model("convnet3", real.num_classes, C, (H, W), width=self.width)
        return model.to(self.device)

    def initial_images(self, real):
        g = torch.Generator().manual_seed(_seed(self.seed, 0))
        K, ipc, f = real.num_classes, self.images_per_class, self.factor
        labels = torch.arange(K).repeat_interleave(ipc)
        if self.init == "noise":
            return torch.randn(K * ipc, *real.shape, generator=g), labels
        x, _ = real.sample(ipc * f * f, g)  # classes in order, ipc f^2 each
        x = x.reshape(K * ipc, f * f, *real.shape)
        return torch.stack([encode_mix(block, f) for block in x]), labels

    def matching_loss(self, model, x_real, y_real, x_syn, y_syn):
        raise NotImplementedError

    def _train_network(self, model, optimizer, real, syn, y_syn, generator, augment):
        if self.net_steps == 0:
            return
        model.train()
        for _ in range(self.net_steps):
            if self.net_data == "synthetic":
                x, y = decode(syn.detach(), y_syn, self.factor)
                if len(x) > self.batch_net:
                    pick = torch.randperm(len(x), generator=generator)[:self.batch_net].to(x.device)
                    x, y = x[pick], y[pick]
            else:
                per_class = max(1, self.batch_net // real.num_classes)
                x, y = real.sample(per_class, generator)
                x, y = x.to(self.device), y.to(self.device)
            if augment is not None:
                x = augment(x, generator)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    # -- the loop -----------------------------------------------------------------------------
    def condense(self, data, labels=None, resume=None, on_checkpoint=None, meta=None):
        """Learn the synthetic set. data: an ArrayDataset (lcmat.data) or images [N, C, H, W]
        (normalised) with `labels`. resume: a state from on_checkpoint to continue. on_checkpoint:
        called with (state dict, CondensedSet so far) every checkpoint_every iterations and at the
        end. Returns a CondensedSet whose history has one row per outer iteration: iteration,
        loss (mean matching loss over its steps), seconds."""
        real = RealData(data, labels)
        low, high = real.pixel_range()
        if resume is not None:
            syn = resume["images"].clone().float()
            y_syn = resume["labels"].clone().long()
            start, history = int(resume["iteration"]), list(resume["history"])
        else:
            syn, y_syn = self.initial_images(real)
            start, history = 0, []
        syn = syn.to(self.device).requires_grad_(True)
        y_syn = y_syn.to(self.device)
        optimizer = torch.optim.SGD([syn], lr=self.lr_img, momentum=self.momentum_img)
        if resume is not None and resume.get("optimizer") is not None:
            optimizer.load_state_dict(resume["optimizer"])
        match_aug, net_aug = self.matching_augment(), self.network_augment()
        meta = dict(meta or {}, method=self.name, config=self.config(), num_classes=real.num_classes)

        def snapshot(t):
            state = {"iteration": t, "images": syn.detach().cpu().clone(), "labels": y_syn.cpu().clone(),
                     "history": list(history), "optimizer": optimizer.state_dict()}
            return state, CondensedSet(state["images"], state["labels"], self.factor, history, meta)

        bar = tqdm(total=self.iterations, initial=start, desc=f"condense {self.name}", disable=not self.progress)
        for t in range(start, self.iterations):
            t0 = time.perf_counter()
            generator = torch.Generator().manual_seed(_seed(self.seed, 2, t))
            model = self.build_network(real, t)
            for p in model.parameters():
                p.requires_grad_(self.uses_network_training)
            net_opt = torch.optim.SGD(model.parameters(), lr=self.lr_net, momentum=self.momentum_net,
                                      weight_decay=self.weight_decay_net)
            losses = []
            for step in range(self.outer_loop):
                x_real, y_real = real.sample(self.batch_real, generator)
                x_real, y_real = x_real.to(self.device), y_real.to(self.device)
                x_syn, y_dec = decode(syn, y_syn, self.factor)
                if match_aug is not None:
                    params = match_aug.sample(1, generator)
                    x_real, x_syn = match_aug.apply(x_real, params), match_aug.apply(x_syn, params)
                model.train()
                loss = self.matching_loss(model, x_real, y_real, x_syn, y_dec)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.name}: the matching loss became {loss.item()} at outer "
                                             f"iteration {t}, step {step}; lower lr_img")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                if step < self.outer_loop - 1:
                    self._train_network(model, net_opt, real, syn, y_syn, generator, net_aug)
            if low is not None:
                with torch.no_grad():
                    lo = low.to(syn).view(1, -1, 1, 1)
                    hi = high.to(syn).view(1, -1, 1, 1)
                    syn.copy_(torch.maximum(torch.minimum(syn, hi), lo))
            history.append({"iteration": t + 1, "loss": float(np.mean(losses)),
                            "seconds": time.perf_counter() - t0})
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.4g}")
            if on_checkpoint is not None and ((t + 1) % self.checkpoint_every == 0 or t + 1 == self.iterations):
                on_checkpoint(*snapshot(t + 1))
        bar.close()
        return snapshot(self.iterations)[1]


class LCMatC(Condenser):
    """LCMat-C (LCMat paper, Sec. 3.3, Eq. 15) in IDC's loop: last-layer gradient matching plus
    rho/2 times the L1 gap of the per-sample gradient variances (losses.lcmat_c_loss), closed
    forms through lcmat.ops.gradient_moments. rho = 0 is last-layer gradient matching.

    Defaults follow IDC (factor 2, the network trained on real data between matching steps, DSA
    applied identically to real and synthetic batches); ``metric`` is IDC's per-dataset distance
    ("mse" CIFAR-10, "l1" MNIST / Fashion-MNIST). The authors did not release LCMat-C, so the
    default rho (1.0) is ours, not theirs."""

    name = "lcmat-c"

    def __init__(self, images_per_class, rho=1.0, metric="mse", backend=None, factor=2, net_data="real",
                 lr_img=5e-3, **kwargs):
        super().__init__(images_per_class, factor=factor, net_data=net_data, lr_img=lr_img, **kwargs)
        self.rho = float(rho)
        if not (math.isfinite(self.rho) and self.rho >= 0):
            raise ValueError(f"rho: expected a finite non-negative number, got {rho!r}")
        self.metric = check_metric(metric)
        self.backend = backend

    def extra_config(self):
        return {"rho": self.rho, "metric": self.metric}

    def matching_augment(self):
        """IDC's matching augmentation: colour, crop and cutout, all applied, one draw per step."""
        if not self.dsa:
            return None
        return DSAAugment(self.dsa_strategy or "color_crop_cutout", mode="all", batch=True)

    def matching_loss(self, model, x_real, y_real, x_syn, y_syn):
        with torch.no_grad():
            h_real = model.embed(x_real)
            z_real = model.fc(h_real)
        h_syn = model.embed(x_syn)
        z_syn = model.fc(h_syn)
        return lcmat_c_loss(h_real, z_real, y_real, h_syn, z_syn, y_syn, self.rho, self.metric, self.backend)


class DC(Condenser):
    """Dataset condensation with gradient matching (Zhao et al., ICLR 2021): every weight tensor,
    row-cosine distance, network trained on the synthetic set, no augmentation."""

    name = "dc"

    def __init__(self, images_per_class, dsa=False, factor=1, net_data="synthetic", lr_img=0.1, **kwargs):
        super().__init__(images_per_class, dsa=dsa, factor=factor, net_data=net_data, lr_img=lr_img, **kwargs)

    def matching_loss(self, model, x_real, y_real, x_syn, y_syn):
        return network_gradient_matching_loss(model, x_real, y_real, x_syn, y_syn)


class DSA(DC):
    """DC with differentiable Siamese augmentation (Zhao and Bilen, ICML 2021)."""

    name = "dsa"

    def __init__(self, images_per_class, dsa=True, **kwargs):
        super().__init__(images_per_class, dsa=dsa, **kwargs)


class DM(Condenser):
    """Distribution matching (Zhao and Bilen, WACV 2023): mean embeddings of a randomly
    initialised network, per class, squared L2; the network is never trained."""

    name = "dm"
    uses_network_training = False

    def __init__(self, images_per_class, outer_loop=1, net_steps=0, lr_img=1.0, factor=1, **kwargs):
        if net_steps != 0:
            raise ValueError(f"net_steps: DM never trains its network, got {net_steps!r}")
        super().__init__(images_per_class, outer_loop=outer_loop, net_steps=net_steps, lr_img=lr_img,
                         factor=factor, **kwargs)

    def matching_loss(self, model, x_real, y_real, x_syn, y_syn):
        with torch.no_grad():
            emb_real = model.embed(x_real)
        return dm_loss(emb_real, y_real, model.embed(x_syn), y_syn)


class RandomReal:
    """Random real images per class (the baseline): no learning, factor 1."""

    name = "random"

    def __init__(self, images_per_class, seed=0, **_ignored):
        self.images_per_class = int(check_positive("images_per_class", images_per_class, integer=True))
        self.seed = int(seed)
        self.factor = 1

    def config(self):
        return {"images_per_class": self.images_per_class, "seed": self.seed}

    def condense(self, data, labels=None, resume=None, on_checkpoint=None, meta=None):
        real = RealData(data, labels)
        x, y = real.sample(self.images_per_class, torch.Generator().manual_seed(_seed(self.seed, 0)))
        meta = dict(meta or {}, method=self.name, config=self.config(), num_classes=real.num_classes)
        out = CondensedSet(x, y, 1, [], meta)
        if on_checkpoint is not None:
            on_checkpoint({"iteration": 0, "images": out.images, "labels": out.labels, "history": [],
                           "optimizer": None}, out)
        return out


CONDENSERS = {"lcmat-c": LCMatC, "dc": DC, "dsa": DSA, "dm": DM, "random": RandomReal}


def get_condenser(name, images_per_class, **kwargs):
    key = str(name).strip().lower().replace("_", "-")
    key = {"lcmatc": "lcmat-c"}.get(key, key)
    if key not in CONDENSERS:
        raise ValueError(f"method: unknown condensation method {name!r}; expected one of {', '.join(CONDENSERS)}")
    return CONDENSERS[key](images_per_class, **kwargs)
