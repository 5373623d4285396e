#!/usr/bin/env python3
"""PyTorch reference throughput of the TRM-MLP recursion (shared/TRM.md).

The forward pass is the authors' (models/recursive_reasoning/trm.py with
mlp_t=True): eval mode, torch.no_grad, F.linear on [out, in] weights, the
token mixer on the transposed state, RMS norm computed in float32 and cast
back (as the authors' rms_norm does). Prints one JSON object per batch size
and mode: net calls per second (batch x recursion steps per second) and
GFLOP/s, with the keys of `trm bench --json` where they mean the same.

    python3 benches/pytorch_reference.py --batch 1 8 --seconds 10
    python3 benches/pytorch_reference.py --device cuda --batch 1 8 64 256 1024 --seconds 3

On the CPU (the default) it runs float32 eager, one row per batch with
backend "pytorch" (bf16-eager too when --modes asks). With --device cuda it runs, per batch, each of --modes:

- f32-eager:  float32, one kernel launch per op (TF32 off: true float32
              products, as trm-wgpu's);
- f32-graph:  float32, one ACT step (T x (n + 1) net calls) captured once
              as a CUDA graph (torch.cuda.graph) and replayed, the state
              carried through static tensors;
- bf16-eager: bfloat16 weights and states, eager;

backend "pytorch-cuda-<mode>". The CUDA timing synchronises after every ACT
step, so the time is the GPU's, not the launch queue's.

Weights are random: throughput does not depend on their values.
"""
import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F

MODES = ("f32-eager", "f32-graph", "bf16-eager")


def inter(expansion, width):
    return 256 * math.ceil(round(expansion * width * 2 / 3) / 256)


def rms_norm(x, eps):
    # float32 statistics whatever the state's type (a no-op cast in float32)
    h = x.float()
    variance = h.square().mean(-1, keepdim=True)
    return (h * torch.rsqrt(variance + eps)).to(x.dtype)


def swiglu(x, gate_up, down):
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, down)


class Net:
    def __init__(self, D, S, layers, expansion, eps, gen, device="cpu", dtype=torch.float32):
        self.eps = eps
        ti, ci = inter(expansion, S), inter(expansion, D)

        def w(o, i):
            return (torch.randn(o, i, generator=gen) / math.sqrt(i)).to(device, dtype)

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


def states(batch, S, D, gen, device, dtype):
    return [torch.randn(batch, S, D, generator=gen).to(device, dtype) for _ in range(3)]


def time_eager(net, x, y, z, T, n, seconds, sync):
    """ACT steps until `seconds` pass; returns (ACT steps, seconds)."""
    for _ in range(2):  # warm up (cuBLAS handles, allocator)
        y, z = act_step(net, x, y, z, T, n)
    sync()
    steps, start = 0, time.perf_counter()
    while True:
        y, z = act_step(net, x, y, z, T, n)
        sync()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps, elapsed


def time_graph(net, x, y, z, T, n, seconds):
    """As time_eager, one ACT step captured as a CUDA graph and replayed."""
    x, y, z = x.clone(), y.clone(), z.clone()  # the graph's static inputs
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture, as required
        for _ in range(2):
            act_step(net, x, y, z, T, n)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_next, z_next = act_step(net, x, y, z, T, n)
        # carry the state: the next replay starts from this one's result
        y.copy_(y_next)
        z.copy_(z_next)
    graph.replay()
    torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while True:
        graph.replay()
        torch.cuda.synchronize()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps, elapsed


def backend_name(cuda, mode):
    """`pytorch-cuda-f32-eager` and so on; plain `pytorch` for the CPU's
    float32 eager rows (what benches/compare_pytorch.py reads)."""
    if cuda:
        return f"pytorch-cuda-{mode}"
    return "pytorch" if mode == "f32-eager" else f"pytorch-cpu-{mode}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=0, help="0: torch default")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--seq", type=int, default=97)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--modes", nargs="+", choices=MODES, default=None,
                   help="default: f32-eager on the CPU, all three on CUDA")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    modes = args.modes or (list(MODES) if cuda else ["f32-eager"])
    if not cuda and "f32-graph" in modes:
        p.error("f32-graph needs --device cuda")
    if cuda:
        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA device")
        # true float32 products, as trm-wgpu computes them
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        adapter = torch.cuda.get_device_name()
        sync = torch.cuda.synchronize
    else:
        adapter = f"torch {torch.__version__} on {platform.processor() or platform.machine()}"
        sync = lambda: None  # noqa: E731
    D, S, T, n = args.hidden, args.seq, 3, 6
    for mode in modes:
        dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float32
        gen = torch.Generator().manual_seed(0)
        net = Net(D, S, 2, 4.0, 1e-5, gen, args.device, dtype)
        for batch in args.batch:
            x, y, z = states(batch, S, D, gen, args.device, dtype)
            with torch.no_grad():
                if mode == "f32-graph":
                    steps, elapsed = time_graph(net, x, y, z, T, n, args.seconds)
                else:
                    steps, elapsed = time_eager(net, x, y, z, T, n, args.seconds, sync)
            calls = steps * T * (n + 1) * batch
            rate = calls / elapsed
            row = {
                "backend": backend_name(cuda, mode),
                "adapter": adapter,
                "api": "cuda" if cuda else "-",
                "schedule": mode,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "batch": batch,
                "net_calls_per_s": round(rate, 2),
                "gflops": round(rate * net.flops / 1e9, 2),
                "net_calls": calls,
                "seconds": round(elapsed, 3),
            }
            print(json.dumps(row), flush=True)
            del x, y, z
        del net
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
