"""lcmat: fast, exact coreset selection (LCMat-S, FDMat and the usual baselines).

    import lcmat
    cs = lcmat.LCMat(fraction=0.1).select_features(embeddings=H, logits=Z, labels=y)
    cs.indices, cs.weights, cs.scores
"""
import os

# Idle OpenMP threads sleep instead of spinning: on a shared or oversubscribed machine spinning
# threads that lose their core made the C++ kernels up to 40x slower. Takes effect only when
# lcmat is imported before torch (the CLI does); set OMP_WAIT_POLICY yourself otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .coreset import Coreset  # noqa: E402
from .ot import coreset_ot_distance, sinkhorn  # noqa: E402
from .selectors import (CRAIG, EL2N, METHODS, Entropy, FDMat, Forgetting, GraNd, Herding,
                        KCenterGreedy, LCMat, LeastConfidence, Margin, Selector, Uniform,
                        get_method)

__version__ = "0.1.0"
__all__ = ["Coreset", "sinkhorn", "coreset_ot_distance", "METHODS", "get_method", "Selector",
           "Uniform", "LCMat", "FDMat", "CRAIG", "Herding", "KCenterGreedy", "GraNd", "EL2N",
           "LeastConfidence", "Entropy", "Margin", "Forgetting"]
