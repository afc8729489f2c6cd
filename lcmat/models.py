"""Classification networks whose forward pass ends with one nn.Linear on the embedding.

Contract used by feature extraction: the last module applied in ``forward`` is an ``nn.Linear`` (and
it is the last ``nn.Linear`` registered), and its input is the penultimate embedding ``h``. A forward
hook on :func:`find_last_linear` therefore sees ``h`` and the logits. Every model also has
``embedding_dim`` and ``embed(x)`` (the embedding without the classifier).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .validation import check_positive

__all__ = ["ResNet18", "ConvNet3", "LeNet", "MLP", "get_model", "find_last_linear", "MODEL_NAMES"]


def _pair(im_size, argument="im_size"):
    if isinstance(im_size, int):
        size = (im_size, im_size)
    else:
        size = tuple(int(s) for s in im_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{argument}: expected a positive int or (height, width), got {im_size!r}")
    return size


def _positive_int(name, value):
    return int(check_positive(name, value, integer=True))


class _Classifier(nn.Module):
    """Base: subclasses define ``embed`` and ``fc``; forward is ``fc(embed(x))``."""

    def forward(self, x):
        return self.fc(self.embed(x))


# ------------------------------------------------------------------------------------------------
# ResNet-18, CIFAR variant
# ------------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(_Classifier):
    """ResNet-18 for small images: 3x3 stride-1 stem, no max-pool, BatchNorm, 512-d embedding."""

    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        num_classes = _positive_int("num_classes", num_classes)
        in_channels = _positive_int("in_channels", in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.embedding_dim = 512
        self.fc = nn.Linear(512, num_classes)

    def embed(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


# ------------------------------------------------------------------------------------------------
# ConvNet-3 (dataset-condensation literature)
# ------------------------------------------------------------------------------------------------

class ConvNet3(_Classifier):
    """Three blocks of conv3x3 - instance norm - ReLU - 2x2 average pool, then a linear classifier.

    Instance norm is ``GroupNorm(width, width)`` (affine), as in the dataset-condensation code. The
    embedding is the flattened last feature map: width * (H // 8) * (W // 8) values.
    """

    def __init__(self, num_classes, in_channels, im_size, width=128):
        super().__init__()
        num_classes = _positive_int("num_classes", num_classes)
        in_channels = _positive_int("in_channels", in_channels)
        width = _positive_int("width", width)
        h, w = _pair(im_size)
        if h < 8 or w < 8:
            raise ValueError(f"im_size: ConvNet3 pools three times and needs at least 8x8, got {h}x{w}")
        blocks, channels = [], in_channels
        for _ in range(3):
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(width, width, affine=True),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels = width
            h, w = h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.embedding_dim = width * h * w
        self.fc = nn.Linear(self.embedding_dim, num_classes)

    def embed(self, x):
        return torch.flatten(self.features(x), 1)


# ------------------------------------------------------------------------------------------------
# LeNet and MLP
# ------------------------------------------------------------------------------------------------

class LeNet(_Classifier):
    """LeNet-5: conv5x5(6) - ReLU - maxpool2 - conv5x5(16) - ReLU - maxpool2 - 120 - 84 - classes.

    The first convolution pads by 2 so that 28x28 inputs give the classic 5x5x16 map; inputs down to
    12x12 are accepted. The embedding is the 84-d post-ReLU activation.
    """

    def __init__(self, num_classes, in_channels=1, im_size=28):
        super().__init__()
        num_classes = _positive_int("num_classes", num_classes)
        in_channels = _positive_int("in_channels", in_channels)
        h, w = _pair(im_size)
        # conv(pad 2) keeps the size; pool halves; conv(no pad) removes 4; pool halves.
        h2, w2 = (h // 2 - 4) // 2, (w // 2 - 4) // 2
        if h2 < 1 or w2 < 1:
            raise ValueError(f"im_size: LeNet needs images of at least 12x12, got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(
            nn.Linear(16 * h2 * w2, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
        )
        self.embedding_dim = 84
        self.fc = nn.Linear(84, num_classes)

    def embed(self, x):
        return self.hidden(torch.flatten(self.features(x), 1))


class MLP(_Classifier):
    """Flatten - Linear(hidden) - ReLU - Linear(hidden) - ReLU - Linear(classes)."""

    def __init__(self, num_classes, in_features, hidden=256):
        super().__init__()
        num_classes = _positive_int("num_classes", num_classes)
        in_features = _positive_int("in_features", in_features)
        hidden = _positive_int("hidden", hidden)
        self.hidden = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.embedding_dim = hidden
        self.fc = nn.Linear(hidden, num_classes)

    def embed(self, x):
        return self.hidden(x)


# ------------------------------------------------------------------------------------------------
# Factory and helpers
# ------------------------------------------------------------------------------------------------

MODEL_NAMES = ("resnet18", "convnet3", "lenet", "mlp")
_MODEL_ALIASES = {"convnet": "convnet3", "resnet": "resnet18", "lenet5": "lenet"}


def get_model(name, num_classes, in_channels, im_size, **kwargs):
    """Build a model by name ("resnet18", "convnet3", "lenet", "mlp"); kwargs go to its constructor
    (e.g. ``width`` for ConvNet3, ``hidden`` for MLP)."""
    if not isinstance(name, str):
        raise ValueError(f"name: expected a model name string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "").replace("_", "")
    key = _MODEL_ALIASES.get(key, key)
    if key == "resnet18":
        return ResNet18(num_classes, in_channels, **kwargs)
    if key == "convnet3":
        return ConvNet3(num_classes, in_channels, im_size, **kwargs)
    if key == "lenet":
        return LeNet(num_classes, in_channels, im_size, **kwargs)
    if key == "mlp":
        h, w = _pair(im_size)
        return MLP(num_classes, _positive_int("in_channels", in_channels) * h * w, **kwargs)
    raise ValueError(f"name: unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def find_last_linear(model):
    """The last ``nn.Linear`` registered in ``model`` (its input is the embedding for the models here)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(f"model: {type(model).__name__} has no nn.Linear layer; the embedding is "
                         f"defined as the input of the last nn.Linear")
    return last
