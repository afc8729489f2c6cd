"""`lcmat condense`: learn a synthetic set, with checkpoints, a loss CSV and an image grid.

Outputs in --out DIR:
    checkpoint.pt   the loop's state every --checkpoint-every outer iterations (--resume continues it)
    loss.csv        iteration, matching loss (mean over the iteration's steps), seconds
    synthetic.pt    the final CondensedSet (lcmat.CondensedSet.load)
    synthetic.png   the stored synthetic images, one row per class
    result.json     the configuration and, unless --no-evaluate, the test accuracy of a fresh
                    ConvNet-3 trained on the decoded images
Existing outputs are never overwritten without --overwrite (or continued, with --resume).
"""
import csv
import json
import os
import time

OUTPUTS = ("checkpoint.pt", "loss.csv", "synthetic.pt", "synthetic.png", "result.json")
METHOD_CHOICES = ("lcmat-c", "dc", "dsa", "dm", "random")


def add_parser(subparsers):
    p = subparsers.add_parser("condense", help="learn a small synthetic training set (LCMat-C, DC, DSA, DM, random)")
    p.add_argument("--method", required=True, choices=METHOD_CHOICES)
    p.add_argument("--dataset", required=True, help="mnist, fashion-mnist, cifar10, emnist-letters or digits")
    p.add_argument("--ipc", type=int, required=True, help="stored synthetic images per class")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="cpu", choices=("cpu", "paper"),
                   help="hyper-parameters: 'paper' (the papers', for a GPU) or 'cpu' (minutes on two cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, help="outer iterations (overrides the preset)")
    p.add_argument("--rho", type=float, default=1.0, help="LCMat-C: weight of the variance gap (0: gradient matching)")
    p.add_argument("--metric", choices=("mse", "l1", "cos"), help="LCMat-C: mean-gradient distance (preset's)")
    p.add_argument("--width", type=int, help="ConvNet-3 channels for condensing and evaluating (preset's)")
    p.add_argument("--factor", type=int, help="multi-formation factor (preset's)")
    p.add_argument("--lr-img", type=float, help="learning rate of the synthetic images (preset's)")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt (or start if absent)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in DIR")
    p.add_argument("--no-evaluate", action="store_true", help="skip training a network on the result")
    p.add_argument("--eval-epochs", type=int, help="evaluation epochs (preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--backend", help="kernel backend for LCMat-C (default: the fastest available)")
    p.add_argument("--data-dir", help="dataset folder (default: LCMAT_DATA_DIR)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_condense)
    return p


def _existing_outputs(out):
    return [name for name in OUTPUTS if os.path.exists(os.path.join(out, name))]


def write_loss_csv(path, history):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iteration", "loss", "seconds"])
        for row in history:
            writer.writerow([row["iteration"], f"{row['loss']:.8g}", f"{row['seconds']:.4f}"])
    os.replace(tmp, path)


def save_grid(path, condensed, mean=None, std=None):
    """A PNG of the stored images: one row per class, de-normalised with the dataset's mean/std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    images, labels = condensed.images, condensed.labels
    classes = sorted(set(labels.tolist()))
    per_class = max(int((labels == c).sum()) for c in classes)
    x = images.clone()
    if mean is not None and std is not None:
        x = x * torch_tensor(std).view(1, -1, 1, 1) + torch_tensor(mean).view(1, -1, 1, 1)
    x = x.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    fig, axes = plt.subplots(len(classes), per_class, figsize=(max(3.0, 1.1 * per_class), 1.1 * len(classes)), squeeze=False)
    for r, c in enumerate(classes):
        members = np.flatnonzero(labels.numpy() == c)
        for j in range(per_class):
            ax = axes[r][j]
            ax.axis("off")
            if j < len(members):
                img = x[members[j]]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1)
        axes[r][0].set_title(str(c), fontsize=7, loc="left")
    fig.suptitle(f"{condensed.meta.get('method')} ({condensed.meta.get('dataset')}), {per_class} per class",
                 fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def torch_tensor(values):
    import torch
    return torch.tensor(values, dtype=torch.float32)


def cmd_condense(args):
    import torch

    from ..data import load_dataset
    from .methods import get_condenser
    from .presets import preset_config

    if args.ipc < 1:
        raise SystemExit("lcmat condense: --ipc must be a positive integer")
    out = args.out
    existing = _existing_outputs(out) if os.path.isdir(out) else []
    if existing and not (args.resume or args.overwrite):
        raise SystemExit(f"lcmat condense: {out} already holds {', '.join(existing)}; pass --resume to continue "
                         f"or --overwrite to replace them")
    if args.overwrite and not args.resume:
        for name in existing:
            os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume and os.path.exists(os.path.join(out, "result.json")):
        print(f"lcmat condense: {out} is complete (result.json exists); nothing to do")
        return

    try:
        train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
        test = None if args.no_evaluate else load_dataset(args.dataset, "test", data_dir=args.data_dir)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"lcmat condense: {err}")
    config, evaluation = preset_config(args.method, args.preset, train.name or args.dataset, args.ipc)
    for key, value in (("iterations", args.iterations), ("width", args.width), ("factor", args.factor),
                       ("lr_img", args.lr_img)):
        if value is not None:
            config[key] = value
    if args.width is not None:
        evaluation["width"] = args.width
    if args.eval_epochs is not None:
        evaluation["epochs"] = args.eval_epochs
    if args.method == "lcmat-c":
        config["rho"] = args.rho
        config["backend"] = args.backend
        if args.metric:
            config["metric"] = args.metric
    if args.method != "random":
        config.update(checkpoint_every=args.checkpoint_every, device=args.device, progress=not args.no_progress)
    try:
        condenser = get_condenser(args.method, args.ipc, seed=args.seed, **config)
    except ValueError as err:
        raise SystemExit(f"lcmat condense: {err}")
    settings = {"method": args.method, "dataset": train.name, "ipc": args.ipc, "preset": args.preset,
                "seed": args.seed, "config": condenser.config()}

    ckpt_path = os.path.join(out, "checkpoint.pt")
    resume = None
    if args.resume and os.path.exists(ckpt_path):
        resume = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if json.loads(resume["settings"]) != settings:
            raise SystemExit(f"lcmat condense: {ckpt_path} was written with other settings "
                             f"({resume['settings']}); use another --out or --overwrite")
        print(f"resuming {args.method} at outer iteration {resume['iteration']}")

    def on_checkpoint(state, partial):
        state = dict(state, settings=json.dumps(settings))
        torch.save(state, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)
        write_loss_csv(os.path.join(out, "loss.csv"), partial.history)

    start = time.perf_counter()
    condensed = condenser.condense(train, resume=resume, on_checkpoint=on_checkpoint,
                                   meta={"dataset": train.name, "mean": list(train.mean), "std": list(train.std)})
    seconds = time.perf_counter() - start
    condensed.save(os.path.join(out, "synthetic.pt"))
    write_loss_csv(os.path.join(out, "loss.csv"), condensed.history)
    save_grid(os.path.join(out, "synthetic.png"), condensed, train.mean, train.std)
    result = dict(settings, condense_seconds=seconds,
                  final_loss=condensed.history[-1]["loss"] if condensed.history else None)
    if test is not None:
        run = condensed.evaluate(test, seed=args.seed, device=args.device, progress=not args.no_progress,
                                 **evaluation)
        result.update(evaluation=evaluation, final_acc=run["final_acc"], best_acc=run["best_acc"],
                      eval_seconds=run["seconds"])
        print(f"{args.method} {train.name} ipc {args.ipc} seed {args.seed}: test accuracy {run['final_acc']:.2f}%")
    with open(os.path.join(out, "result.json.tmp"), "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(os.path.join(out, "result.json.tmp"), os.path.join(out, "result.json"))
    print(f"wrote {out}: synthetic.pt, synthetic.png, loss.csv, result.json ({seconds:.1f} s condensing)")
