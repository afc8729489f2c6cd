"""Hyper-parameter presets for the condensation methods.

``paper``: the papers' settings (for a GPU).
    LCMat-C in IDC's loop (IDC's argument defaults and reproduce settings): factor 2, 2000 outer
    iterations x 100 matching steps, batch_real 64, the network trained between steps on real
    data (one pass over n_data = 2000 CIFAR-10 / 500 other images, here batch_net 64 x
    n_data / 64 steps), lr_img 5e-3 (CIFAR-10, "mse") or 1e-4 ("l1", MNIST / Fashion-MNIST),
    momentum 0.5; matching augmentation colour, crop, cutout.
    DC / DSA: 1000 iterations, (outer_loop, net_steps) = (1, 1) / (10, 50) / (50, 10) for
    1 / 10 / 50 images per class, batch_real 256, lr_img 0.1, momentum 0.5, network lr 0.01.
    DM: 20000 iterations, batch_real 256, lr_img 1.0, momentum 0.5, no network training.
    Evaluation: ConvNet-3 (128 channels) trained 1000 epochs, lr 0.01, DSA.
``cpu``: the same loops made small enough for minutes on two cores: width 32, 40 (LCMat-C, DC,
    DSA) or 200 (DM) outer iterations, at most 5 matching steps per network, 16 real images per class
    per step; evaluation 200 epochs, batch 128. These sizes are ours, set for run time. LCMat-C's
    lr_img (CPU_LR_IMG) is ours too: with a thousandth of IDC's matching steps, IDC's rate (or ten
    times it) leaves the stored images almost where they started, because each image's gradient is
    a 1 / (ipc factor^2) share of its class's mean, so the learnt set is its initialisation
    (docs/quality.md, "Condensation").
"""

PRESETS = ("paper", "cpu")

_IDC_METRIC = {"cifar10": ("mse", 5e-3), "mnist": ("l1", 1e-4), "fashion-mnist": ("l1", 1e-4)}
# The cpu preset's LCMat-C image learning rate per distance. l1: the best of 1e-3, 1e-2 and 1e-1 on
# Fashion-MNIST at 1 and 10 images per class. mse: scaled from it by the ratio of the two distances'
# image gradients at initialisation (mse's are several times smaller), so that one matching step
# moves the images by a similar fraction of their spread; not tuned on accuracy.
CPU_LR_IMG = {"l1": 0.1, "mse": 0.5}


def _dc_loops(ipc):
    if ipc <= 1:
        return 1, 1
    if ipc <= 10:
        return 10, 50
    return 50, 10


def preset_config(method, preset, dataset="cifar10", images_per_class=10):
    """(condense kwargs, evaluate kwargs) for a method ("lcmat-c", "dc", "dsa", "dm", "random")."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {PRESETS}, got {preset!r}")
    method = str(method).lower()
    ipc = int(images_per_class)
    metric, lr_img = _IDC_METRIC.get(dataset, ("mse", 5e-3))
    no_flip = dataset in ("mnist", "digits")  # digits are not mirror-symmetric (IDC drops flip on MNIST)
    dsa_strategy = "color_crop_cutout_scale_rotate" if no_flip else None
    if preset == "paper":
        n_data = 2000 if dataset == "cifar10" else 500
        evaluation = {"width": 128, "epochs": 1000, "lr": 0.01, "batch_size": 256}
        configs = {
            "lcmat-c": {"iterations": 2000, "outer_loop": 100, "factor": 2, "batch_real": 64,
                        "net_data": "real", "batch_net": 64, "net_steps": max(1, n_data // 64),
                        "lr_img": lr_img, "metric": metric, "width": 128},
            "dc": {"iterations": 1000, "batch_real": 256, "lr_img": 0.1, "width": 128},
            "dsa": {"iterations": 1000, "batch_real": 256, "lr_img": 0.1, "width": 128},
            "dm": {"iterations": 20000, "batch_real": 256, "lr_img": 1.0, "width": 128},
            "random": {},
        }
    else:
        evaluation = {"width": 32, "epochs": 200, "lr": 0.01, "batch_size": 128}
        configs = {
            "lcmat-c": {"iterations": 40, "outer_loop": 5, "factor": 2, "batch_real": 16, "net_data": "real",
                        "batch_net": 64, "net_steps": 2, "lr_img": CPU_LR_IMG[metric], "metric": metric, "width": 32},
            "dc": {"iterations": 40, "batch_real": 16, "lr_img": 0.1, "width": 32},
            "dsa": {"iterations": 40, "batch_real": 16, "lr_img": 0.1, "width": 32},
            "dm": {"iterations": 200, "batch_real": 32, "lr_img": 1.0, "width": 32},
            "random": {},
        }
    if method not in configs:
        raise ValueError(f"method: expected one of {tuple(configs)}, got {method!r}")
    config = dict(configs[method])
    if method in ("dc", "dsa"):
        outer, inner = _dc_loops(ipc)
        if preset == "cpu":
            outer, inner = min(outer, 5), min(inner, 5)
        config.update(outer_loop=outer, net_steps=inner)
    if method != "random" and dsa_strategy:
        config["dsa_strategy"] = dsa_strategy
    return config, evaluation
