"""The authors' PyTorch outputs (tests/data/golden) reproduced through the
package: the project's model files and the authors' step_N checkpoints."""

import numpy as np
import pytest

import st
import trm_wgpu
from conftest import GOLDEN, SUDOKU_EASY
from reference import assert_close

# the golden cases whose recursion is contractive over every stored step
CASES = [
    "sudoku_mlp_small",
    "maze_att_rope",
    "arc_att_learned",
    "mlp_no_puzzle_emb",
    "hrm/hrm_sudoku_rope",
    "hrm/hrm_maze_learned_4x4",
]


def case(name):
    tensors, meta = st.read(GOLDEN / f"{name}.case.safetensors")
    return tensors, int(meta["steps"])


def check_case(model, tensors, steps, backend, what):
    out = model.solve(
        tensors["inputs"], tensors["puzzle_identifiers"], backend=backend, steps=steps
    )
    # PyTorch's float32 against ours: both round; measured agreement of
    # independent implementations is 1e-6 .. 1e-5 (golden/README.md)
    assert_close(f"{what}: logits", out["logits"], tensors[f"logits.step{steps}"], 1e-5)
    for q in ("q_halt_logits", "q_continue_logits"):
        assert_close(f"{what}: {q}", out[q], tensors[f"{q}.step{steps}"], 1e-5, 1e-4)
    assert_close(f"{what}: z_H", out["z_H"], tensors["z_H"], 1e-5)
    assert_close(f"{what}: z_L", out["z_L"], tensors["z_L"], 1e-5)
    np.testing.assert_array_equal(out["steps"], np.full(len(tensors["inputs"]), steps))


@pytest.mark.parametrize("name", CASES)
def test_golden_case_on_the_cpu(name):
    tensors, steps = case(name)
    model = trm_wgpu.load(GOLDEN / f"{name}.model.safetensors")
    check_case(model, tensors, steps, "cpu", name)


@pytest.mark.parametrize("name", ["maze_att_rope", "mlp_no_puzzle_emb"])
def test_golden_case_on_the_gpu(name, gpu_backend):
    tensors, steps = case(name)
    model = trm_wgpu.load(GOLDEN / f"{name}.model.safetensors")
    check_case(model, tensors, steps, gpu_backend, f"{name} on {gpu_backend}")


@pytest.mark.parametrize(
    "path",
    [
        GOLDEN / "official" / "step_1000",  # all_config.yaml beside it
        GOLDEN / "official",  # the directory: its newest step_N
    ],
    ids=["file", "directory"],
)
def test_official_step_file_reproduces_pytorch(path):
    # step_1000 holds the weights of sudoku_mlp_small
    tensors, steps = case("sudoku_mlp_small")
    model = trm_wgpu.load(path)
    assert model.path.endswith("step_1000")
    check_case(model, tensors, steps, "cpu", f"{path.name}")


def test_official_step_file_without_dataset_json(tmp_path):
    # seq_len, vocab_size and the table's rows are read from the shapes
    (tmp_path / "step_1000").write_bytes((GOLDEN / "official" / "step_1000").read_bytes())
    tensors, steps = case("sudoku_mlp_small")
    model = trm_wgpu.load(
        tmp_path / "step_1000", config=GOLDEN / "official" / "all_config.yaml"
    )
    check_case(model, tensors, steps, "cpu", "step_1000 without dataset.json")


def test_official_hrm_step_file_reproduces_pytorch():
    tensors, steps = case("hrm/hrm_sudoku_rope")
    model = trm_wgpu.load(GOLDEN / "hrm" / "hrm_official" / "step_2000")
    assert model.config["arch"] == "hrm"
    check_case(model, tensors, steps, "cpu", "hrm step_2000")


def test_sudoku_easy_gives_pytorchs_answers():
    # a real trained model: PyTorch's answers after ACT steps 1 and 4 (after
    # 16, test_example.py checks the scores of PyTorch's answers)
    reference, _ = st.read(SUDOKU_EASY / "reference_answers.safetensors")
    model = trm_wgpu.load(SUDOKU_EASY / "official" / "step_827")
    for steps in (1, 4):
        out = model.solve(reference["inputs"], backend="cpu", steps=steps)
        answers = out["logits"].argmax(-1)
        np.testing.assert_array_equal(answers, reference[f"answer.step{steps}"])
        assert_close(
            f"q_halt after {steps} steps",
            out["q_halt_logits"],
            reference[f"q_halt_logits.step{steps}"],
            1e-4,
        )
