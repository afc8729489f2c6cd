"""Differentiable Siamese augmentation (DSA; Zhao and Bilen, ICML 2021) with torch ops.

The transforms and their ranges are DSA's: colour (brightness + U(-0.5, 0.5), saturation x U(0, 2)
around the per-pixel channel mean, contrast x U(0.5, 1.5) around the image mean), crop (a
translation by up to 1/8 of the side, zero filled), cutout (a zeroed square of half the side),
horizontal flip (probability 1/2), scale (each axis x U(1/1.2, 1.2)) and rotation (U(-15, 15)
degrees). Flip, scale, rotation and translation are one affine resampling (bilinear, zero
padding); every operation is differentiable in the images.

Siamese: the random parameters are drawn first (`sample`) and then applied (`apply`), so the real
and the synthetic batch of a matching step get exactly the same transformation. With
``batch=True`` one parameter set serves the whole batch (IDC's matching mode: real and synthetic
images, all classes, one transformation); with ``batch=False`` every image gets its own (used to
train networks on synthetic images). ``mode="single"`` applies one randomly chosen operation per
call (DSA's default), ``mode="all"`` applies every operation of the strategy in turn.

Every draw comes from the `torch.Generator` passed in (CPU), and the number of draws does not
depend on the images, so a seed fixes the transformation.
"""
import math

import torch
import torch.nn.functional as F

OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _parse(strategy):
    if not isinstance(strategy, str):
        raise ValueError(f"strategy: expected names joined by '_', got {strategy!r}")
    ops = tuple(s for s in strategy.split("_") if s)
    bad = [s for s in ops if s not in OPERATIONS]
    if bad or not ops:
        raise ValueError(f"strategy: unknown operation(s) {bad or strategy!r}; expected some of {OPERATIONS}")
    return ops


class DSA:
    """Seeded differentiable augmentation; ``DSA()(x, generator)`` samples and applies."""

    def __init__(self, strategy=DSA_STRATEGY, mode="single", batch=True, scale=1.2, rotate=15.0, crop=0.125,
                 cutout=0.5, brightness=1.0, saturation=2.0, contrast=0.5, flip=0.5):
        self.ops = _parse(strategy)
        if mode not in ("single", "all"):
            raise ValueError(f"mode: expected 'single' or 'all', got {mode!r}")
        self.strategy, self.mode, self.batch = "_".join(self.ops), mode, bool(batch)
        self.scale, self.rotate, self.crop, self.cutout = float(scale), float(rotate), float(crop), float(cutout)
        self.brightness, self.saturation, self.contrast, self.flip = (float(brightness), float(saturation),
                                                                      float(contrast), float(flip))

    def __repr__(self):
        return f"DSA(strategy={self.strategy!r}, mode={self.mode!r}, batch={self.batch})"

    def sample(self, n, generator=None):
        """Parameters for a batch of n images (one set when ``batch``): a dict of CPU tensors."""
        m = 1 if self.batch else int(n)
        u = lambda: torch.rand(m, generator=generator, dtype=torch.float64)  # noqa: E731
        params = {
            "choice": torch.randint(len(self.ops), (1,), generator=generator),
            "brightness": u(), "saturation": u(), "contrast": u(),
            "shift_x": u(), "shift_y": u(),
            "cut_x": u(), "cut_y": u(),
            "flip": u(), "scale_x": u(), "scale_y": u(), "angle": u(),
        }
        return params

    def active(self, params):
        """The operations these parameters apply, in order."""
        return self.ops if self.mode == "all" else (self.ops[int(params["choice"])],)

    def apply(self, x, params):
        """x [B, C, H, W] transformed by `params` (from :meth:`sample`), differentiably."""
        if x.dim() != 4:
            raise ValueError(f"x: expected [B, C, H, W] images, got shape {tuple(x.shape)}")
        for op in self.active(params):
            x = getattr(self, "_" + op)(x, params)
        return x

    def __call__(self, x, generator=None):
        return self.apply(x, self.sample(len(x), generator))

    # -- the operations; p[...] are U(0, 1) draws, [m] with m = 1 (batch) or B ------------------
    @staticmethod
    def _column(t, x):
        return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)

    def _color(self, x, p):
        x = x + self._column(p["brightness"] - 0.5, x) * self.brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * self._column(p["saturation"], x) * self.saturation + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (self._column(p["contrast"], x) + self.contrast) + mean

    def _affine(self, x, theta):
        theta = theta.to(device=x.device, dtype=x.dtype).expand(len(x), 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _crop(self, x, p):
        # a whole-pixel translation: output pixel (i, j) reads input (i + dy, j + dx)
        H, W = x.shape[2], x.shape[3]
        dx = torch.floor(p["shift_x"] * (2 * int(W * self.crop) + 1)) - int(W * self.crop)
        dy = torch.floor(p["shift_y"] * (2 * int(H * self.crop) + 1)) - int(H * self.crop)
        theta = torch.zeros(len(dx), 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = 2.0 * dx / W
        theta[:, 1, 2] = 2.0 * dy / H
        return self._affine(x, theta)

    def _cutout(self, x, p):
        H, W = x.shape[2], x.shape[3]
        ch, cw = int(H * self.cutout + 0.5), int(W * self.cutout + 0.5)
        cy = torch.floor(p["cut_y"] * (H + 1 - ch % 2)).long()
        cx = torch.floor(p["cut_x"] * (W + 1 - cw % 2)).long()
        rows = torch.arange(H)[None, :, None]
        cols = torch.arange(W)[None, None, :]
        y0, x0 = (cy - ch // 2)[:, None, None], (cx - cw // 2)[:, None, None]
        inside = (rows >= y0) & (rows < y0 + ch) & (cols >= x0) & (cols < x0 + cw)
        keep = (~inside).to(device=x.device, dtype=x.dtype)[:, None]
        return x * keep

    def _flip(self, x, p):
        sign = torch.where(p["flip"] < self.flip, -1.0, 1.0).to(torch.float64)
        theta = torch.zeros(len(sign), 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = sign
        theta[:, 1, 1] = 1.0
        return self._affine(x, theta)

    def _scale(self, x, p):
        lo = 1.0 / self.scale
        sx = p["scale_x"] * (self.scale - lo) + lo
        sy = p["scale_y"] * (self.scale - lo) + lo
        theta = torch.zeros(len(sx), 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 1, 1] = sx, sy
        return self._affine(x, theta)

    def _rotate(self, x, p):
        a = (p["angle"] - 0.5) * 2.0 * self.rotate * math.pi / 180.0
        theta = torch.zeros(len(a), 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
        return self._affine(x, theta)
