#!/usr/bin/env python3
"""PyTorch reference throughput of the TRM-MLP recursion (shared/TRM.md).

The forward pass is the authors' (models/recursive_reasoning/trm.py with
mlp_t=True): float32, eval mode, torch.no_grad, F.linear on [out, in] weights,
the token mixer on the transposed state. Prints one JSON object per batch
size: net calls per second (batch x recursion steps per second) and GFLOP/s.

    python3 benches/pytorch_reference.py --batch 1 8 --seconds 10

Weights are random: throughput does not depend on their values.
"""
import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F


def inter(expansion, width):
    return 256 * math.ceil(round(expansion * width * 2 / 3) / 256)


def rms_norm(x, eps):
    variance = x.square().mean(-1, keepdim=True)
    return x * torch.rsqrt(variance + eps)


def swiglu(x, gate_up, down):
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, down)


class Net:
    def __init__(self, D, S, layers, expansion, eps, gen):
        self.eps = eps
        ti, ci = inter(expansion, S), inter(expansion, D)
        w = lambda o, i: torch.randn(o, i, generator=gen) / math.sqrt(i)
        self.layers = [
            (w(2 * ti, S), w(S, ti), w(2 * ci, D), w(D, ci)) for _ in range(layers)
        ]
        self.flops = layers * 6 * S * D * (ti + ci)

    def __call__(self, h, injection):
        h = h + injection
        for tgu, tdown, gu, down in self.layers:
            t = h.transpose(1, 2)
            t = rms_norm(t + swiglu(t, tgu, tdown), self.eps)
            h = t.transpose(1, 2)
            h = rms_norm(h + swiglu(h, gu, down), self.eps)
        return h


def act_step(net, x, y, z, T, n):
    for _ in range(T):
        for _ in range(n):
            z = net(z, y + x)
        y = net(y, z)
    return y, z


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=0, help="0: torch default")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--seq", type=int, default=97)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    D, S, T, n = args.hidden, args.seq, 3, 6
    net = Net(D, S, 2, 4.0, 1e-5, gen)
    for batch in args.batch:
        x = torch.randn(batch, S, D, generator=gen)
        y = torch.randn(batch, S, D, generator=gen)
        z = torch.randn(batch, S, D, generator=gen)
        with torch.no_grad():
            act_step(net, x, y, z, T, n)  # warm up
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                y, z = act_step(net, x, y, z, T, n)
                calls += T * (n + 1) * batch
            elapsed = time.perf_counter() - start
        rate = calls / elapsed
        print(json.dumps({
            "backend": "pytorch",
            "adapter": f"torch {torch.__version__} on {platform.processor() or platform.machine()}",
            "threads": torch.get_num_threads(),
            "batch": batch,
            "net_calls_per_s": round(rate, 2),
            "gflops": round(rate * net.flops / 1e9, 2),
        }), flush=True)


if __name__ == "__main__":
    main()
