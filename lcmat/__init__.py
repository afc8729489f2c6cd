"""lcmat: fast, exact coreset selection (LCMat-S, FDMat and the usual baselines).

    import lcmat
    cs = lcmat.LCMat(fraction=0.1).select_features(embeddings=H, logits=Z, labels=y)
    cs.indices, cs.weights, cs.scores
"""
import os

# Idle OpenMP threads sleep instead of spinning: on a shared or oversubscribed machine spinning
# threads that lose their core slow the C++ kernels down many times over. Takes effect only when
# lcmat is imported before torch (the CLI does); set OMP_WAIT_POLICY yourself otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _map_source_tree_triton_kernels():
    """Make `lcmat.triton_kernels` importable from a source checkout.

    An install places the repository's top-level `triton_kernels/` inside the package (setup.py's
    package_dir). In a checkout used with PYTHONPATH at its root and nothing installed (CI's
    layout, the GPU machine's), or from a second worktree beside an editable install elsewhere,
    the twins sit beside `lcmat/` instead: a finder placed first maps the name to that folder.
    """
    import importlib.abc
    import importlib.util
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    twins = os.path.join(os.path.dirname(here), "triton_kernels")
    if os.path.isdir(os.path.join(here, "triton_kernels")) or \
            not os.path.isfile(os.path.join(twins, "__init__.py")):
        return

    class _TritonTwinsFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname != __name__ + ".triton_kernels":
                return None
            return importlib.util.spec_from_file_location(
                fullname, os.path.join(twins, "__init__.py"), submodule_search_locations=[twins])

    sys.meta_path.insert(0, _TritonTwinsFinder())


_map_source_tree_triton_kernels()

from .coreset import Coreset  # noqa: E402
from .ot import ConvergenceWarning, coreset_ot_distance, sinkhorn  # noqa: E402
from .validation import BlockMemoryError  # noqa: E402
from .selectors import (CRAIG, EL2N, Entropy, FDMat, Forgetting, GraNd, Herding,  # noqa: E402
                        KCenterGreedy, LCMat, LeastConfidence, Margin, Selector, Uniform)
from .methods import METHODS, get_method  # noqa: E402
from .matching import AdaCore, Glister, GradMatch  # noqa: E402
from .diversity import Cal, ContextualDiversity, DeepFool, ModerateDS  # noqa: E402
from .submodular import GraphCut, LogDeterminant  # noqa: E402

from .condense import DC, DM, DSA, CondensedSet, LCMatC, RandomReal  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Coreset", "sinkhorn", "coreset_ot_distance", "ConvergenceWarning", "BlockMemoryError", "METHODS", "get_method", "Selector",
           "Uniform", "LCMat", "FDMat", "CRAIG", "Herding", "KCenterGreedy", "GraNd", "EL2N",
           "LeastConfidence", "Entropy", "Margin", "Forgetting", "GradMatch", "Glister", "AdaCore",
           "ContextualDiversity", "DeepFool", "Cal", "GraphCut", "LogDeterminant", "ModerateDS",
           "LCMatC", "DC", "DSA", "DM", "RandomReal", "CondensedSet"]
