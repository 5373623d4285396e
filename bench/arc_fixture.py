#!/usr/bin/env python3
"""Make an ARC evaluation fixture with the authors' own code, to hold
`trm arc-eval` to it.

Runs the TRM repository's `dataset/build_arc_dataset.py` on puzzles (the
12 of `tests/data/arc` and/or seeded random ones), writes predictions for
every test example (right answers, wrong answers shared by all augmentations
of a test input, wrong answers of their own, crops that end early, q_halt
logits with ties), and runs the repository's `evaluators/arc.py` over them.
The output directory then holds what `tests/data/arc` holds: `data/`,
`predictions.safetensors`, `expected.json` and `submission.json`.

    pip install numpy numba pydantic argdantic torch safetensors
    python bench/arc_fixture.py --trm-repo PATH/TinyRecursiveModels --out /tmp/fx \
        --num-aug 5 --seed 11 --random-puzzles 9
    trm arc-eval --data /tmp/fx/data --predictions /tmp/fx/predictions.safetensors \
        --json --submission /tmp/fx/ours.json
    # equal to /tmp/fx/expected.json's "results", and cmp ours.json submission.json
"""

import argparse
import json
import os
import sys

import numpy as np


def random_grid(rng, rows=None, cols=None):
    rows = rows or int(rng.integers(1, 31))
    cols = cols or int(rng.integers(1, 31))
    return rng.integers(0, 10, size=(rows, cols)).tolist()


def random_puzzles(rng, count):
    puzzles = {}
    for p in range(count):
        train = [{"input": random_grid(rng), "output": random_grid(rng)} for _ in range(int(rng.integers(1, 4)))]
        tests = []
        for _ in range(int(rng.integers(1, 4))):
            if tests and rng.random() < 0.2:
                # two test inputs alike: the evaluator keys both by one hash
                tests.append({"input": tests[0]["input"], "output": random_grid(rng)})
            else:
                tests.append({"input": random_grid(rng), "output": random_grid(rng)})
        puzzles[f"rnd{p:05x}{int(rng.integers(0, 1 << 16)):04x}"] = {"train": train, "test": tests}
    return puzzles


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trm-repo", required=True, help="a checkout of SamsungSAILMontreal/TinyRecursiveModels")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-aug", type=int, default=8)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--shared-puzzles", type=int, default=12, help="how many of tests/data/arc's puzzles to use")
    ap.add_argument("--random-puzzles", type=int, default=0)
    ap.add_argument("--drop", type=float, default=0.0,
                    help="share of test inputs left without any prediction (the evaluator skips them)")
    args = ap.parse_args()

    sys.path.insert(0, os.path.abspath(args.trm_repo))
    from dataset import build_arc_dataset as builder
    from dataset.common import PuzzleDatasetMetadata
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from evaluators import arc as evaluator

    rng = np.random.default_rng(args.seed)
    here = os.path.dirname(os.path.abspath(__file__))
    shared = json.load(open(os.path.join(here, "..", "tests", "data", "arc", "data", "test_puzzles.json")))
    puzzles = dict(list(shared.items())[: args.shared_puzzles])
    puzzles.update(random_puzzles(rng, args.random_puzzles))

    os.makedirs(args.out, exist_ok=True)
    raw = os.path.join(args.out, "raw")
    os.makedirs(raw, exist_ok=True)
    challenges = {k: {"train": v["train"], "test": [{"input": t["input"]} for t in v["test"]]} for k, v in puzzles.items()}
    solutions = {k: [t["output"] for t in v["test"]] for k, v in puzzles.items()}
    json.dump(challenges, open(os.path.join(raw, "arc_evaluation_challenges.json"), "w"))
    json.dump(solutions, open(os.path.join(raw, "arc_evaluation_solutions.json"), "w"))

    data = os.path.join(args.out, "data")
    config = builder.DataProcessConfig(
        input_file_prefix=os.path.join(raw, "arc"),
        output_dir=data,
        subsets=["evaluation"],
        test_set_name="evaluation",
        seed=args.seed,
        num_aug=args.num_aug,
    )
    builder.convert_dataset(config)

    test = os.path.join(data, "test")
    inputs = np.load(os.path.join(test, "all__inputs.npy"))
    labels = np.load(os.path.join(test, "all__labels.npy"))
    pids = np.load(os.path.join(test, "all__puzzle_identifiers.npy"))
    pidx = np.load(os.path.join(test, "all__puzzle_indices.npy"))
    identifiers = json.load(open(os.path.join(data, "identifiers.json")))
    example_ids = np.repeat(pids, np.diff(pidx)).astype(np.int32)

    # one shared wrong answer per (original puzzle, input), in the original frame
    shared_wrong = {}
    dropped = {}
    keep = np.ones(len(inputs), dtype=bool)
    preds = np.zeros_like(labels, dtype=np.int32)
    for i in range(len(inputs)):
        name = identifiers[example_ids[i]]
        orig, inverse = builder.inverse_aug(name)
        key = (orig, builder.grid_hash(inverse(evaluator._crop(inputs[i]))))
        if key not in dropped:
            dropped[key] = rng.random() < args.drop
        keep[i] = not dropped[key]
        u = rng.random()
        if u < 0.3:
            preds[i] = labels[i]
        elif u < 0.65:
            if key not in shared_wrong:
                shared_wrong[key] = np.array(random_grid(rng), dtype=np.uint8)
            grid = shared_wrong[key]
            # into this augmentation's frame: the inverse of the inverse
            trans_id, perm = name.split("|||")[-2:] if "|||" in name else ("t0", "0123456789")
            mapping = np.array([int(c) for c in perm], dtype=np.uint8)
            aug = builder.dihedral_transform(mapping[grid], int(trans_id[1:]))
            preds[i] = builder.np_grid_to_seq_translational_augment(aug, aug, False)[0]
        elif u < 0.9:
            preds[i] = builder.np_grid_to_seq_translational_augment(
                np.array(random_grid(rng), dtype=np.uint8), np.zeros((1, 1), np.uint8), False)[0]
        else:
            # noise: PAD, EOS and colours anywhere; the crop ends at the first PAD/EOS
            preds[i] = rng.integers(0, 12, size=900)
    # q_halt logits: few distinct values, so that (votes, mean q) ties happen
    q = rng.choice(np.array([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=np.float32), size=len(inputs))
    q = np.where(rng.random(len(inputs)) < 0.5, q, rng.normal(size=len(inputs)).astype(np.float32))
    inputs, example_ids, preds, q = inputs[keep], example_ids[keep], preds[keep], q[keep]

    save_file({
        "inputs": torch.from_numpy(inputs.astype(np.int32)),
        "puzzle_identifiers": torch.from_numpy(example_ids),
        "preds": torch.from_numpy(preds),
        "q_halt_logits": torch.from_numpy(q.astype(np.float32)),
    }, os.path.join(args.out, "predictions.safetensors"))

    meta = PuzzleDatasetMetadata(**json.load(open(os.path.join(test, "dataset.json"))))
    ev = evaluator.ARC(data, meta)
    # one process: the gather is the local state
    dist.gather_object = lambda obj, lst, dst=0, group=None: lst.__setitem__(0, obj)
    batch = 37
    for s in range(0, len(inputs), batch):
        ev.update_batch(
            {"inputs": torch.from_numpy(inputs[s:s + batch].astype(np.int32)),
             "puzzle_identifiers": torch.from_numpy(example_ids[s:s + batch])},
            {"preds": torch.from_numpy(preds[s:s + batch]),
             "q_halt_logits": torch.from_numpy(q[s:s + batch].astype(np.float32))})
    results = ev.result(args.out, rank=0, world_size=1)
    json.dump({"results": results, "puzzles": list(puzzles), "num_aug": args.num_aug, "seed": args.seed,
               "examples": int(len(inputs))}, open(os.path.join(args.out, "expected.json"), "w"), indent=1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
