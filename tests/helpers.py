"""Small things several test modules share: an in-memory (x, label) dataset, a call spy, and a bench
script loaded as a module."""
import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


class PairDataset(torch.utils.data.Dataset):
    """Items (x[i], int(y[i])): what `Selector.select(model, dataset)` and the trainers read."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def spy(monkeypatch, module, name):
    """Record (args, kwargs) of every call of module.<name>, still calling it."""
    calls, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def load_bench_script(name):
    """bench/<name>.py loaded as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
