"""Dataset condensation: LCMat-C (loss-curvature matching) beside DC, DSA, DM and random real
images, in one loop (methods.py) on one network family (ConvNet-3).

    import lcmat
    syn = lcmat.LCMatC(images_per_class=10, rho=1.0).condense(train_set)
    syn.save("syn.pt"); syn.evaluate(test_set)
"""
from .augment import DSA as DSAAugment
from .decode import decode, encode_mix
from .losses import dm_loss, lcmat_c_loss, network_gradient_matching_loss
from .methods import CONDENSERS, DC, DM, DSA, Condenser, LCMatC, RandomReal, get_condenser
from .presets import PRESETS, preset_config
from .synthetic import CondensedSet, TensorImages

__all__ = ["LCMatC", "DC", "DSA", "DM", "RandomReal", "Condenser", "CondensedSet", "TensorImages", "CONDENSERS",
           "get_condenser", "DSAAugment", "decode", "encode_mix", "lcmat_c_loss", "dm_loss",
           "network_gradient_matching_loss", "PRESETS", "preset_config"]
