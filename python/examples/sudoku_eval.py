"""Evaluate a TRM checkpoint on a Sudoku test set built by the authors'
`dataset/build_sudoku_dataset.py`, on the GPU, and print the metrics their
evaluation reports (`evaluate()` in pretrain.py, metrics of ACTLossHead).

    python sudoku_eval.py data/sudoku-extreme-1k-aug-1000 checkpoints/step_N
    python sudoku_eval.py DATA CHECKPOINT --backend cpu --limit 1000

DATA is the built data set (or its test/ folder): `all__inputs.npy`,
`all__puzzle_identifiers.npy` and, for accuracy, `all__labels.npy`.
CHECKPOINT is the authors' step_N (with all_config.yaml beside it) or a
model in the project's format. Every puzzle runs the model's
halt_max_steps ACT steps, as the authors' evaluation does.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import trm_wgpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="the built data set, or its test/ folder")
    parser.add_argument("checkpoint", type=Path, help="step_N (all_config.yaml beside it) or .safetensors")
    parser.add_argument("--backend", default="gpu", help="gpu (default), vulkan, metal, dx12, gl, cpu, auto")
    parser.add_argument("--precision", default="f32", help="f32, f16, bf16 or int8")
    parser.add_argument("--batch", type=int, default=512, help="puzzles per solve")
    parser.add_argument("--limit", type=int, help="the first N test puzzles only")
    args = parser.parse_args()

    test = args.data / "test" if (args.data / "test").is_dir() else args.data
    inputs = np.load(test / "all__inputs.npy", mmap_mode="r")
    identifiers = np.load(test / "all__puzzle_identifiers.npy", mmap_mode="r")
    labels_path = test / "all__labels.npy"
    labels = np.load(labels_path, mmap_mode="r") if labels_path.exists() else None
    count = len(inputs) if args.limit is None else min(args.limit, len(inputs))

    model = trm_wgpu.load(args.checkpoint, precision=args.precision)
    print(f"{model!r}\non {model.describe(args.backend)}", file=sys.stderr)

    # ACTLossHead's sums over the test set (every puzzle halts at the last
    # step in evaluation, so every puzzle counts)
    sums = dict.fromkeys(
        ["accuracy", "exact_accuracy", "lm_loss", "q_halt_accuracy", "q_halt_loss", "steps"], 0.0
    )
    started = time.perf_counter()
    for start in range(0, count, args.batch):
        end = min(start + args.batch, count)
        out = model.solve(inputs[start:end], identifiers[start:end], backend=args.backend)
        if labels is None:
            continue
        target = np.asarray(labels[start:end], dtype=np.int64)
        mask = target != 0  # the builder's ignore_label_id: 0 (pad)
        tokens = np.maximum(mask.sum(-1), 1)
        correct = mask & (out["logits"].argmax(-1) == target)
        exact = correct.sum(-1) == mask.sum(-1)
        logits = out["logits"].astype(np.float64)
        log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        picked = np.take_along_axis(logits, np.maximum(target, 0)[..., None], -1)[..., 0]
        q = out["q_halt_logits"].astype(np.float64)
        sums["accuracy"] += (correct.sum(-1) / tokens).sum()
        sums["exact_accuracy"] += exact.sum()
        sums["lm_loss"] += (np.where(mask, log_z - picked, 0).sum(-1) / tokens).sum()
        sums["q_halt_accuracy"] += ((q >= 0) == exact).sum()
        # binary cross-entropy with logits against "the answer is exact"
        sums["q_halt_loss"] += (np.logaddexp(0, q) - q * exact).sum()
        sums["steps"] += out["steps"].sum()
    seconds = time.perf_counter() - started
    print(f"{count} puzzles in {seconds:.1f} s ({count / seconds:.1f} puzzles/s)", file=sys.stderr)
    if labels is None:
        print("no all__labels.npy: solved, nothing to score", file=sys.stderr)
        return
    metrics = {"all": {k: float(v / count) for k, v in sums.items()}}
    # the authors' evaluation returns this dict (wandb logs it as all/...)
    print(metrics)
    print(f"exact accuracy: {metrics['all']['exact_accuracy']:.4f} ({int(sums['exact_accuracy'])} of {count})")


if __name__ == "__main__":
    main()
