"""examples/sudoku_eval.py on a test set in the layout of the authors'
builder (made here from data/sudoku-easy's sample puzzles): the trained
model's exact accuracy after 16 ACT steps is PyTorch's, 74 of 100
(data/sudoku-easy/accuracy.json), and the GPU prints what the CPU prints."""

import ast
import json
import subprocess
import sys

import numpy as np
import pytest

import st
from conftest import REPO, SUDOKU_EASY

SCRIPT = REPO / "python" / "examples" / "sudoku_eval.py"


def tokens(path):
    lines = path.read_text().split()
    return np.array([[1 if c == "." else int(c) + 1 for c in line] for line in lines],
                    dtype=np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The builder's layout: test/all__{inputs,labels,puzzle_identifiers}.npy."""
    root = tmp_path_factory.mktemp("sudoku-easy-built")
    test = root / "test"
    test.mkdir()
    inputs = tokens(SUDOKU_EASY / "puzzles.txt")
    np.save(test / "all__inputs.npy", inputs)
    np.save(test / "all__labels.npy", tokens(SUDOKU_EASY / "solutions.txt"))
    np.save(test / "all__puzzle_identifiers.npy", np.zeros(len(inputs), np.int32))
    return root


def evaluate(dataset, *args):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(dataset), str(SUDOKU_EASY / "official" / "step_827"),
         *args],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    metrics_line, exact_line = out.stdout.strip().splitlines()
    return ast.literal_eval(metrics_line)["all"], exact_line


def test_exact_accuracy_is_pytorchs(dataset):
    metrics, exact = evaluate(dataset, "--backend", "cpu")
    pytorch = json.loads((SUDOKU_EASY / "accuracy.json").read_text())
    step16 = pytorch["accuracy_per_act_step"][-1]
    assert exact == "exact accuracy: 0.7400 (74 of 100)"
    assert metrics["exact_accuracy"] == step16["exact"]
    assert metrics["steps"] == 16.0
    # PyTorch's answers and q_halt after 16 steps give the same scores
    answers, _ = st.read(SUDOKU_EASY / "reference_answers.safetensors")
    solved = np.all(answers["answer.step16"] == answers["solutions"], axis=-1)
    q = answers["q_halt_logits.step16"]
    assert metrics["q_halt_accuracy"] == np.mean((q >= 0) == solved)
    cells = np.mean(answers["answer.step16"] == answers["solutions"])
    assert metrics["accuracy"] == pytest.approx(cells, abs=1e-12)
    assert metrics["lm_loss"] > 0 and metrics["q_halt_loss"] > 0


def test_the_gpu_prints_what_the_cpu_prints(dataset, gpu_backend):
    # lavapipe is slow: four puzzles, in two solves
    cpu, cpu_exact = evaluate(dataset, "--backend", "cpu", "--limit", "4")
    gpu, gpu_exact = evaluate(dataset, "--backend", gpu_backend, "--limit", "4", "--batch", "2")
    assert gpu_exact == cpu_exact
    for name in ("exact_accuracy", "q_halt_accuracy", "steps"):
        assert gpu[name] == cpu[name], name
    for name in ("accuracy", "lm_loss", "q_halt_loss"):
        assert gpu[name] == pytest.approx(cpu[name], rel=1e-4), name
