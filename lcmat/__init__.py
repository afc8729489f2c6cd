"""lcmat: fast, exact coreset selection (LCMat-S, FDMat and the usual baselines).

    import lcmat
    cs = lcmat.LCMat(fraction=0.1).select_features(embeddings=H, logits=Z, labels=y)
    cs.indices, cs.weights, cs.scores
"""
from .coreset import Coreset
from .ot import coreset_ot_distance, sinkhorn
from .selectors import (CRAIG, EL2N, METHODS, Entropy, FDMat, Forgetting, GraNd, Herding,
                        KCenterGreedy, LCMat, LeastConfidence, Margin, Selector, Uniform,
                        get_method)

__version__ = "0.1.0"
__all__ = ["Coreset", "sinkhorn", "coreset_ot_distance", "METHODS", "get_method", "Selector",
           "Uniform", "LCMat", "FDMat", "CRAIG", "Herding", "KCenterGreedy", "GraNd", "EL2N",
           "LeastConfidence", "Entropy", "Margin", "Forgetting"]
