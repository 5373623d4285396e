#!/usr/bin/env python3
"""Side-by-side throughput of trm-wgpu's CPU engine and PyTorch on the
official Sudoku-Extreme TRM-MLP shape, in one run on one machine.

The two alternate in short rounds (trm, torch, trm, torch, ...) so that both
see the same machine state; the ratio of the medians is reported per batch
size (and per comparison). Needs a release build (`cargo build --release`)
and PyTorch (`pip install torch`).

    python3 benches/compare_pytorch.py --rounds 5 --seconds 8 --batch 1 8

One run can interleave several comparisons, each trm precision against a
PyTorch precision, so that all of them meet the same machine states:

    python3 benches/compare_pytorch.py --compare f32 bf16 int8 --batch 1 8

- f32:  trm float32 against PyTorch float32 (eager);
- bf16: trm bf16 weights with matched activations (bf16 products on AMX
        where the CPU has it) against PyTorch bfloat16 weights and states;
- int8: trm int8 weights with matched activations against PyTorch
        bfloat16 (PyTorch's fastest path here; the reference has no int8).

With --out (default: bench/results/DATE-cpu-compare-pytorch-COMMIT.json)
it writes the run: the CPU's model and flags, the commit, the command,
the niceness it ran at and a --note, every round's rates and the
machine's load average around it, and the medians, ranges and ratios.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name: (trm --precision, trm --activations, PyTorch mode)
COMPARISONS = {
    "f32": ("f32", "f32", "f32-eager"),
    "bf16": ("bf16", "matched", "bf16-eager"),
    "int8": ("int8", "matched", "bf16-eager"),
}


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def cpu_info():
    """The CPU's name with its family, model and stepping, and the flags
    that matter to the kernels."""
    fields, flags = {}, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = value.split()
                elif key in ("model name", "cpu family", "model", "stepping"):
                    fields.setdefault(key, value.strip())
    except OSError:
        pass
    model = fields.get("model name", "unknown CPU")
    if "cpu family" in fields:
        model += (f" (family {fields['cpu family']} model {fields.get('model', '?')}"
                  f" stepping {fields.get('stepping', '?')})")
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_tile", "amx_bf16", "amx_int8")
    return model, [f for f in wanted if f in flags]


def git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=0, help="0: all cores for both")
    p.add_argument("--trm", default=os.path.join(ROOT, "target", "release", "trm"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--compare", nargs="+", choices=sorted(COMPARISONS), default=None,
                   help="comparisons to interleave in one run (default: one, from the flags below)")
    # one comparison: trm at a reduced precision against PyTorch at its own: e.g.
    # --precision int8 --activations matched --torch-mode bf16-eager
    p.add_argument("--precision", default=None, help="trm's weight precision (default: f32)")
    p.add_argument("--activations", default=None, help="trm's CPU activations: f32 or matched")
    p.add_argument("--torch-mode", default="f32-eager", choices=["f32-eager", "bf16-eager"],
                   help="PyTorch's precision: float32, or bfloat16 weights and states")
    p.add_argument("--note", default=None, help="a remark on the run's conditions, kept in its JSON")
    p.add_argument("--out", default=None,
                   help="where to write the run's JSON (default: bench/results/DATE-cpu-compare-pytorch-COMMIT.json; '-' for none)")
    args = p.parse_args()
    threads = args.threads or os.cpu_count()
    if args.compare:
        comparisons = {name: COMPARISONS[name] for name in args.compare}
    else:
        comparisons = {"custom": (args.precision or "f32", args.activations or "f32", args.torch_mode)}
    cpu, flags = cpu_info()
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    print(f"# {cpu}, {os.cpu_count()} logical cores, {threads} threads each, {platform.platform()}")
    print(f"# flags: {' '.join(flags)}; commit {commit}{' (modified)' if dirty else ''}")
    rates = {(name, who, b): [] for name in comparisons for who in ("trm", "torch") for b in args.batch}
    kernels, rounds = {}, []
    torch_version = None
    for r in range(args.rounds):
        record = {"round": r + 1, "load_before": load(), "rates": []}
        for b in args.batch:
            for name, (precision, activations, torch_mode) in comparisons.items():
                trm_cmd = [args.trm, "bench", "--backend", "cpu", "--batch", str(b),
                           "--seconds", str(args.seconds), "--threads", str(threads), "--json",
                           "--precision", precision, "--activations", activations]
                trm = run_json(trm_cmd)[0]
                torch = run_json([args.python, os.path.join(HERE, "pytorch_reference.py"), "--batch", str(b),
                                  "--seconds", str(args.seconds), "--threads", str(threads),
                                  "--modes", torch_mode])[0]
                torch_version = torch.get("torch", torch_version)
                kernels[name] = trm.get("kernel") or trm.get("int8_kernel") or "-"
                rates[(name, "trm", b)].append(trm["net_calls_per_s"])
                rates[(name, "torch", b)].append(torch["net_calls_per_s"])
                record["rates"].append({"comparison": name, "batch": b, "trm": trm["net_calls_per_s"],
                                        "torch": torch["net_calls_per_s"]})
                print(f"round {r + 1} batch {b} {name}: trm {trm['net_calls_per_s']:.1f} ({kernels[name]}), "
                      f"torch {torch['net_calls_per_s']:.1f} net calls/s ({torch_mode}, {torch['adapter']})",
                      flush=True)
        record["load_after"] = load()
        rounds.append(record)
    print("\n| comparison | batch | trm kernel | trm-wgpu CPU net calls/s (range) | PyTorch net calls/s (range) | ratio of medians (per round) |")
    print("|---|---|---|---|---|---|")
    summary = []
    for name, (precision, activations, torch_mode) in comparisons.items():
        for b in args.batch:
            mine, theirs = rates[(name, "trm", b)], rates[(name, "torch", b)]
            t, q = statistics.median(mine), statistics.median(theirs)
            ratios = [a / c for a, c in zip(mine, theirs)]
            print(f"| {name} | {b} | {kernels[name]} | {t:.1f} ({min(mine):.1f}..{max(mine):.1f}) | "
                  f"{q:.1f} ({min(theirs):.1f}..{max(theirs):.1f}) | {t / q:.2f} "
                  f"({min(ratios):.2f}..{max(ratios):.2f}) |")
            summary.append({"comparison": name, "batch": b, "trm_precision": precision,
                            "trm_activations": activations, "trm_kernel": kernels[name],
                            "torch_mode": torch_mode,
                            "trm_net_calls_per_s": t, "trm_range": [min(mine), max(mine)],
                            "pytorch_net_calls_per_s": q, "pytorch_range": [min(theirs), max(theirs)],
                            "ratio": t / q, "ratio_median_of_rounds": statistics.median(ratios),
                            "ratio_range": [min(ratios), max(ratios)]})
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": cpu, "cpu_flags": flags, "logical_cores": os.cpu_count(),
              "platform": platform.platform(), "threads": threads, "torch": torch_version,
              "commit": commit, "worktree_modified": bool(dirty),
              "niceness": os.nice(0), "note": args.note,
              "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
              "rounds": args.rounds, "seconds": args.seconds, "rounds_detail": rounds,
              "summary": summary}
    print(json.dumps({k: result[k] for k in ("cpu", "threads", "rounds", "summary")}))
    out = args.out
    if out != "-":
        if out is None:
            day = datetime.date.today().isoformat()
            out = os.path.join(ROOT, "bench", "results", f"{day}-cpu-compare-pytorch-{commit}.json")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"# wrote {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
