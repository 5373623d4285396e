#!/usr/bin/env python3
"""Side-by-side throughput of trm-wgpu's CPU engine and PyTorch on the
official Sudoku-Extreme TRM-MLP shape, in one run on one machine.

The two alternate in short rounds (trm, torch, trm, torch, ...) so that both
see the same machine state; the ratio of the medians is reported per batch
size. Needs a release build (`cargo build --release`) and PyTorch
(`pip install torch`).

    python3 benches/compare_pytorch.py --rounds 5 --seconds 8 --batch 1 8
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=0, help="0: all cores for both")
    p.add_argument("--trm", default=os.path.join(ROOT, "target", "release", "trm"))
    p.add_argument("--python", default=sys.executable)
    # trm at a reduced precision against PyTorch at its own: e.g.
    # --precision int8 --activations matched --torch-mode bf16-eager
    p.add_argument("--precision", default=None, help="trm's weight precision (default: f32)")
    p.add_argument("--activations", default=None, help="trm's CPU activations: f32 or matched")
    p.add_argument("--torch-mode", default="f32-eager", choices=["f32-eager", "bf16-eager"],
                   help="PyTorch's precision: float32, or bfloat16 weights and states")
    args = p.parse_args()
    threads = args.threads or os.cpu_count()
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# {cpu}, {os.cpu_count()} logical cores, {threads} threads each, {platform.platform()}")
    rates = {(who, b): [] for who in ("trm", "torch") for b in args.batch}
    for r in range(args.rounds):
        for b in args.batch:
            trm_cmd = [args.trm, "bench", "--backend", "cpu", "--batch", str(b),
                       "--seconds", str(args.seconds), "--threads", str(threads), "--json"]
            if args.precision:
                trm_cmd += ["--precision", args.precision]
            if args.activations:
                trm_cmd += ["--activations", args.activations]
            trm = run_json(trm_cmd)
            torch = run_json([args.python, os.path.join(HERE, "pytorch_reference.py"), "--batch", str(b),
                              "--seconds", str(args.seconds), "--threads", str(threads),
                              "--modes", args.torch_mode])
            rates[("trm", b)].append(trm[0]["net_calls_per_s"])
            rates[("torch", b)].append(torch[0]["net_calls_per_s"])
            print(f"round {r + 1} batch {b}: trm {trm[0]['net_calls_per_s']:.1f}, "
                  f"torch {torch[0]['net_calls_per_s']:.1f} net calls/s ({torch[0]['adapter']})", flush=True)
    print("\n| batch | trm-wgpu CPU net calls/s | PyTorch net calls/s | ratio |")
    print("|---|---|---|---|")
    summary = []
    for b in args.batch:
        t, q = statistics.median(rates[("trm", b)]), statistics.median(rates[("torch", b)])
        ratios = [a / c for a, c in zip(rates[("trm", b)], rates[("torch", b)])]
        print(f"| {b} | {t:.1f} | {q:.1f} | {t / q:.2f} (per round {min(ratios):.2f}..{max(ratios):.2f}) |")
        summary.append({"batch": b, "trm_net_calls_per_s": t, "pytorch_net_calls_per_s": q, "ratio": t / q})
    print(json.dumps({"cpu": cpu, "threads": threads, "rounds": args.rounds,
                      "trm_precision": args.precision or "f32", "trm_activations": args.activations or "f32",
                      "torch_mode": args.torch_mode, "summary": summary}))


if __name__ == "__main__":
    main()
