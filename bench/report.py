"""Turn pytest-benchmark JSON (--benchmark-json) into the markdown tables of BENCHMARKS.md.

    python bench/report.py out.json [more.json ...]
    python bench/report.py --summary cpu out.json     # one row per operation and shape

One table per operation and shape: each implementation's median time, its achieved GFLOP/s and
GB/s (from the work the benchmark recorded), its speed-up over the reference backend (reference
median / its median) and over the fastest outside library in the same table (that library's
median / its median; above 1 means faster than the best peer). lcmat's backends are
"reference", "cpu", "cuda", "triton", and a variant of one named "<backend>-<variant>" (an
ablation, e.g. cpu-param-backward); every other implementation is a peer.
"""
import argparse
import json
from collections import OrderedDict

LCMAT = ("reference", "cpu", "cuda", "triton")


def is_peer(impl):
    return impl not in LCMAT and impl.split("-")[0] not in LCMAT


def load(paths):
    rows, machine = [], None
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        machine = machine or data.get("machine_info", {})
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            rows.append(dict(op=info.get("op", b["name"].split("[")[0]), shape=info.get("shape", ""),
                             impl=info.get("impl", b["name"]), median=b["stats"]["median"],
                             rounds=b["stats"]["rounds"], flops=info.get("flops", 0.0),
                             bytes=info.get("bytes", 0.0), threads=info.get("threads")))
    return rows, machine


def _ratio(numerator, denominator):
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "-"


def _rate(work, seconds):
    return f"{work / seconds / 1e9:.2f}" if work and seconds > 0 else "-"


def tables(rows):
    groups = OrderedDict()
    for row in rows:
        groups.setdefault((row["op"], row["shape"]), []).append(row)
    out = []
    for (op, shape), group in groups.items():
        ref = next((r["median"] for r in group if r["impl"] == "reference"), None)
        peers = [r["median"] for r in group if is_peer(r["impl"])]
        best_peer = min(peers) if peers else None
        out.append(f"**{op}**, {shape}\n")
        out.append("| implementation | median (ms) | GFLOP/s | GB/s | vs reference | vs best peer |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in sorted(group, key=lambda r: r["median"]):
            out.append(f"| {r['impl']} | {r['median'] * 1e3:.3f} | {_rate(r['flops'], r['median'])} | "
                       f"{_rate(r['bytes'], r['median'])} | {_ratio(ref, r['median'])} | "
                       f"{_ratio(best_peer, r['median'])} |")
        out.append("")
    return "\n".join(out)


def summary(rows, backend="cpu"):
    """One row per operation and shape: `backend`, the reference and the fastest peer side by side."""
    groups = OrderedDict()
    for row in rows:
        groups.setdefault((row["op"], row["shape"]), {})[row["impl"]] = row["median"]
    out = [f"| operation | shape | {backend} (ms) | reference (ms) | fastest peer (ms) | "
           f"{backend} vs reference | {backend} vs fastest peer |",
           "|---|---|---:|---:|---|---:|---:|"]
    for (op, shape), medians in groups.items():
        ours, ref = medians.get(backend), medians.get("reference")
        peers = {k: v for k, v in medians.items() if is_peer(k)}
        best = min(peers, key=peers.get) if peers else None
        cell = (lambda t: f"{t * 1e3:.3f}" if t else "-")
        out.append(f"| {op} | {shape} | {cell(ours)} | {cell(ref)} | "
                   f"{f'{best} {cell(peers[best])}' if best else '-'} | {_ratio(ref, ours)} | "
                   f"{_ratio(peers[best], ours) if best else '-'} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="files written by pytest --benchmark-json")
    parser.add_argument("--summary", metavar="BACKEND", nargs="?", const="cpu",
                        help="one row per operation and shape: BACKEND (default cpu), the reference and "
                             "the fastest peer side by side")
    args = parser.parse_args(argv)
    rows, machine = load(args.json)
    if machine:
        cpu = machine.get("cpu", {})
        print(f"Machine: {cpu.get('brand_raw', machine.get('processor', '?'))}, "
              f"{machine.get('python_implementation', '')} {machine.get('python_version', '')}; "
              f"threads per benchmark: {sorted({r['threads'] for r in rows if r['threads']}) or '?'}\n")
    print(summary(rows, args.summary) if args.summary else tables(rows))


if __name__ == "__main__":
    main()
