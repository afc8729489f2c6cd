"""Markdown table of the condensation study's finished runs (result.json files under this folder):
test accuracy per dataset, images per class and method, mean and standard deviation over the
seeds done, each seed's value, the mean paired difference to Random on the same seeds (and, for
LCMat-C's variants, to LCMat-C at the cpu preset). A
method's folder name is its row (run_study.sh lists them: lcmat-c-rho0 is LCMat-C with rho = 0,
lcmat-c-f1 without multi-formation, lcmat-c-init its initialisation unlearnt; lcmat-c-lrX an
ablation of the images' learning rate)."""
import glob
import json
import os
import statistics
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["random", "dm", "dc", "dsa", "lcmat-c-init", "lcmat-c-rho0", "lcmat-c-f1", "lcmat-c"]


def main():
    runs = defaultdict(dict)
    for path in glob.glob(os.path.join(HERE, "*", "ipc*", "*", "seed*", "result.json")):
        r = json.load(open(path))
        if r.get("final_acc") is not None:
            variant = os.path.basename(os.path.dirname(os.path.dirname(path)))  # e.g. lcmat-c-rho0
            runs[(r["dataset"], r["ipc"], variant)][r["seed"]] = (r["final_acc"], r.get("condense_seconds", 0))
    print("| dataset | ipc | method | seeds | accuracy % (mean ± sd) | per seed | minus Random, paired | "
          "minus lcmat-c, paired | condense s (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(runs, key=lambda k: (k[0], k[1], ORDER.index(k[2]) if k[2] in ORDER else 99, k[2])):
        seeds = runs[key]
        accs = [seeds[s][0] for s in sorted(seeds)]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        diff = paired(seeds, runs.get((key[0], key[1], "random"), {})) if key[2] != "random" else ""
        ablation = paired(seeds, runs.get((key[0], key[1], "lcmat-c"), {})) if key[2].startswith("lcmat-c-") else ""
        secs = statistics.mean(seeds[s][1] for s in seeds)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {len(accs)} | {statistics.mean(accs):.2f} ± {sd:.2f} | "
              f"{', '.join(f'{a:.2f}' for a in accs)} | {diff} | {ablation} | {secs:.0f} |")


def paired(seeds, base):
    """Mean over the seeds both have of (accuracy - base accuracy), and their number."""
    common = sorted(set(seeds) & set(base))
    if not common:
        return ""
    return f"{statistics.mean(seeds[s][0] - base[s][0] for s in common):+.2f} (n={len(common)})"


if __name__ == "__main__":
    main()
