"""lcmat: fast, exact coreset selection (LCMat-S, FDMat and the usual baselines)."""
__version__ = "0.1.0"
