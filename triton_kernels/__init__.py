"""Triton twins of `lcmat.reference` (installed as `lcmat.triton_kernels`)."""
