"""Multi-formation (IDC; Kim et al., ICML 2022): every stored synthetic image holds factor x factor
tiles, each a training image at 1 / factor of the resolution; decoding cuts the tiles out and
upsamples each to the full size (bilinear), so ipc stored images give ipc * factor^2 training
images for the same storage. factor = 1 is the identity.

Images are in the normalised space of the dataset; a side that factor does not divide is padded
at the end with 0 (the dataset mean) before tiling.
"""
import math

import torch
import torch.nn.functional as F

from ..validation import check_positive


def check_factor(factor):
    return int(check_positive("factor", factor, integer=True))


def decode(images, labels, factor):
    """(images [n f^2, C, H, W], labels [n f^2]): tile (a, b) of every image, tiles in row-major
    order as the outer loop (all images' first tile, then all images' second tile, ...)."""
    factor = check_factor(factor)
    if images.dim() != 4:
        raise ValueError(f"images: expected [n, C, H, W], got shape {tuple(images.shape)}")
    if factor == 1:
        return images, labels
    H, W = images.shape[2], images.shape[3]
    sh, sw = math.ceil(H / factor), math.ceil(W / factor)
    padded = F.pad(images, (0, sw * factor - W, 0, sh * factor - H))
    tiles = [padded[:, :, a * sh:(a + 1) * sh, b * sw:(b + 1) * sw] for a in range(factor) for b in range(factor)]
    out = F.interpolate(torch.cat(tiles), size=(H, W), mode="bilinear", align_corners=False)
    return out, labels.repeat(factor * factor)


def encode_mix(real, factor):
    """A stored image from factor^2 real images [f^2, C, H, W] (IDC's 'mix' initialisation): each
    is shrunk into its tile. decode() of the result gives blurred versions of the inputs."""
    factor = check_factor(factor)
    if factor == 1:
        return real[0]
    H, W = real.shape[2], real.shape[3]
    sh, sw = math.ceil(H / factor), math.ceil(W / factor)
    small = F.interpolate(real, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    out = real.new_zeros(real.shape[1], sh * factor, sw * factor)
    for t in range(factor * factor):
        a, b = divmod(t, factor)
        out[:, a * sh:(a + 1) * sh, b * sw:(b + 1) * sw] = small[t]
    return out[:, :H, :W]
