"""The portable build of the extension against the native one (-march=native), side by side.

Each build is a source tree whose lcmat/ holds its own compiled _C (`make check-builds` leaves
build/check-native-0 and build/check-native-1). Runs the whole LCMat-S selection of
run_csrc.py (N = 50,000, C = 10, D = 512, backend "cpu") in fresh processes, the two builds
interleaved, and prints the median seconds of each and their ratio:

    OMP_WAIT_POLICY=passive python bench/run_builds.py build/check-native-0 build/check-native-1
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def one_run(tree, N, C, D):
    """Seconds of one LCMat-S selection with the extension built in `tree`."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    check = "import lcmat.csrc as c, sys; sys.exit(0 if c._C is not None else 1)"
    subprocess.run([sys.executable, "-c", check], env=env, check=True)
    cmd = [sys.executable, os.path.join(HERE, "run_csrc.py"), "--lcmat-child", "cpu", "full", str(N), str(C),
           str(D)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("portable", help="source tree with the portable build")
    parser.add_argument("native", help="source tree with the -march=native build")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(50_000, 10, 512), metavar=("N", "C", "D"))
    args = parser.parse_args()
    times = {"portable": [], "native": []}
    for _ in range(args.reps):
        for name in ("portable", "native"):
            times[name].append(one_run(getattr(args, name), *args.shape))
    portable, native = statistics.median(times["portable"]), statistics.median(times["native"])
    print(f"LCMat-S, N x C x D = {' x '.join(map(str, args.shape))}, median of {args.reps} runs each, interleaved")
    print("| build | seconds |\n|---|---:|")
    print(f"| portable | {portable:.2f} |\n| native (-march=native) | {native:.2f} |")
    print(f"portable / native: {portable / native:.2f}x")


if __name__ == "__main__":
    main()
