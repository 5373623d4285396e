"""Fresh random models of both variants (MLP-mixer and attention, every
position encoding) through the package, against the float64 NumPy
implementation of reference.py, on the CPU and on the GPU (lavapipe in CI).
Issue 30's done-when: within 1e-5 relative L2."""

import numpy as np
import pytest

import reference
import trm_wgpu

# float32 engines against float64 on contractive weights over 3 ACT steps
REL_L2 = 1e-5


def config(mlp_t, pos, puzzle_emb_ndim):
    return {
        "seq_len": 12,
        "vocab_size": 7,
        "num_puzzle_identifiers": 3,
        "hidden_size": 16,
        "expansion": 2.5,
        "num_heads": 2,
        "H_cycles": 2,
        "L_cycles": 2,
        "L_layers": 2,
        "halt_max_steps": 3,
        "mlp_t": mlp_t,
        "pos_encodings": pos,
        "puzzle_emb_ndim": puzzle_emb_ndim,
        "puzzle_emb_len": 0,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    }


VARIANTS = {
    "mlp": config(True, "none", 16),
    "mlp-learned-no-puzzle-emb": config(True, "learned", 0),
    "attention-rope": config(False, "rope", 24),  # 2 puzzle positions, zero padded
    "attention-learned": config(False, "learned", 16),
    "attention-none": config(False, "none", 0),
}


def fresh(tmp_path, name, seed):
    cfg = VARIANTS[name]
    path = tmp_path / f"{name}.safetensors"
    weights = reference.random_model(path, cfg, seed)
    rng = np.random.default_rng(seed + 1)
    tokens = rng.integers(0, cfg["vocab_size"], size=(3, cfg["seq_len"]), dtype=np.int32)
    ids = rng.integers(0, cfg["num_puzzle_identifiers"], size=3)
    expected = reference.solve(weights, cfg, tokens, ids, cfg["halt_max_steps"])
    return trm_wgpu.load(path), tokens, ids, expected


def check(out, expected, what):
    assert set(out) == set(expected), what
    for name in ("logits", "q_halt_logits", "q_continue_logits", "z_H", "z_L"):
        assert out[name].dtype == np.float32, f"{what}: {name}"
        reference.assert_close(f"{what}: {name}", out[name], expected[name], REL_L2)
    assert out["steps"].dtype == np.int32
    np.testing.assert_array_equal(out["steps"], expected["steps"])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_fresh_random_model_on_the_cpu(tmp_path, name):
    model, tokens, ids, expected = fresh(tmp_path, name, seed=len(name))
    check(model.solve(tokens, ids, backend="cpu"), expected, f"{name} on the CPU")


@pytest.mark.parametrize("name", ["mlp", "attention-rope"])
def test_fresh_random_model_on_the_gpu(tmp_path, name, gpu_backend):
    model, tokens, ids, expected = fresh(tmp_path, name, seed=7 + len(name))
    out = model.solve(tokens, ids, backend=gpu_backend)
    assert model.describe(gpu_backend).startswith("gpu: ")
    check(out, expected, f"{name} on {gpu_backend}")
