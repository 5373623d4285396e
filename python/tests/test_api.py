"""The package's interface: outputs named as `trm run` names them, its
options under the CLI flags' names, typed errors with the crate's
messages, adapters, and solves that release the GIL."""

import sys
import threading
import time

import numpy as np
import pytest

import trm_wgpu
from conftest import GOLDEN, SUDOKU_EASY

# what `trm run` writes (SolveOutput::named_arrays, AugmentedOutput's)
RUN_OUTPUTS = {"logits", "q_halt_logits", "q_continue_logits", "z_H", "z_L", "steps"}
AUGMENTED_OUTPUTS = {"logits", "q_halt_logits", "q_continue_logits", "steps",
                     "predictions", "selected", "agreement"}


def sudoku_puzzles(n=100):
    """The sample puzzles of data/sudoku-easy as tokens (blank 1, digit d
    as d + 1)."""
    lines = (SUDOKU_EASY / "puzzles.txt").read_text().split()[:n]
    return np.array([[1 if c == "." else int(c) + 1 for c in line] for line in lines],
                    dtype=np.uint8)


@pytest.fixture(scope="module")
def sudoku():
    return trm_wgpu.load(SUDOKU_EASY / "model.safetensors")


def test_the_model_describes_itself(sudoku):
    assert sudoku.seq_len == 81 and sudoku.vocab_size == 11
    assert sudoku.num_puzzle_identifiers == 1
    assert sudoku.config["hidden_size"] == 128 and sudoku.config["mlp_t"] is True
    assert sudoku.precision == "f32"
    assert sudoku.parameter_count == 520962
    assert sudoku.ignored_tensors == []
    assert "D=128" in repr(sudoku)
    assert sudoku.describe("cpu", threads=1) == "cpu (1 threads)"
    assert trm_wgpu.__version__
    assert issubclass(trm_wgpu.InputError, trm_wgpu.TrmError)


def test_outputs_are_named_and_shaped_as_trm_run_writes_them(sudoku):
    out = sudoku.solve(sudoku_puzzles(4), backend="cpu", steps=2)
    assert set(out) == RUN_OUTPUTS
    assert out["logits"].shape == (4, 81, 11) and out["logits"].dtype == np.float32
    assert out["z_H"].shape == out["z_L"].shape == (4, 81, 128)
    assert out["q_halt_logits"].shape == out["q_continue_logits"].shape == (4,)
    assert out["steps"].dtype == np.int32 and list(out["steps"]) == [2] * 4
    # every integer dtype, lists too, and puzzle identifiers of any int type
    same = sudoku.solve(sudoku_puzzles(4).astype(np.int64).tolist(), np.zeros(4, np.uint16),
                        backend="cpu", steps=2)
    np.testing.assert_array_equal(same["logits"], out["logits"])


def test_precision_at_load():
    stored = trm_wgpu.load(SUDOKU_EASY / "model.safetensors", precision=None)
    assert stored.precision == "f32"
    for precision in ("bf16", "int8"):
        model = trm_wgpu.load(SUDOKU_EASY / "model.safetensors", precision=precision)
        assert model.precision == precision
        out = model.solve(sudoku_puzzles(8), backend="cpu", steps=4)
        assert np.all(np.isfinite(out["logits"]))


def test_augmentation_trajectories_streaming_and_batches(sudoku):
    x = sudoku_puzzles(6)
    plain = sudoku.solve(x, backend="cpu", steps=3)
    voted = sudoku.solve(x, backend="cpu", steps=3, task="sudoku", augment=4, select="vote",
                         seed=5)
    assert set(voted) == AUGMENTED_OUTPUTS
    assert voted["predictions"].shape == (6, 81) and voted["predictions"].dtype == np.int32
    assert np.all((voted["agreement"] > 0) & (voted["agreement"] <= 1))
    assert np.all((voted["selected"] >= 0) & (voted["selected"] < 4))
    # one variant, the identity: the plain solve
    one = sudoku.solve(x, backend="cpu", steps=3, task="sudoku", augment=1)
    np.testing.assert_array_equal(one["logits"], plain["logits"])
    np.testing.assert_array_equal(one["predictions"], plain["logits"].argmax(-1))
    # noisy trajectories of sigma 0 are the plain solve, bit for bit
    calm = sudoku.solve(x, backend="cpu", steps=3, trajectories=3, noise=0.0, noise_on="both")
    np.testing.assert_array_equal(calm["predictions"], plain["logits"].argmax(-1))
    noisy = sudoku.solve(x, backend="cpu", steps=3, trajectories=3, noise=0.5, seed=1)
    assert not np.array_equal(noisy["q_halt_logits"], plain["q_halt_logits"])
    # fixed batches and continuous batching: each puzzle's own outputs
    batched = sudoku.solve(x, backend="cpu", steps=3, batch=4)
    np.testing.assert_allclose(batched["logits"], plain["logits"], rtol=0, atol=1e-6)
    halted = sudoku.solve(x, backend="cpu", halt=True)
    streamed = sudoku.solve(x, backend="cpu", halt=True, slots=2)
    np.testing.assert_array_equal(streamed["steps"], halted["steps"])
    np.testing.assert_allclose(streamed["logits"], halted["logits"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"backend": "cuda"}, trm_wgpu.InputError, "one of cpu, gpu, auto, vulkan"),
        ({"steps": 0}, trm_wgpu.InputError, "at least one ACT step"),
        ({"augment": 2}, trm_wgpu.InputError, "--augment needs --task"),
        ({"slots": 2}, trm_wgpu.InputError, "--slots needs --halt"),
        ({"trajectories": 2}, trm_wgpu.InputError, "--trajectories and --noise go together"),
        ({"trajectories": 2, "noise": -1.0}, trm_wgpu.InputError, "finite sigma >= 0"),
        ({"select": "best"}, trm_wgpu.InputError, "one of q-halt, vote, verifier"),
        ({"task": "chess", "augment": 2}, trm_wgpu.InputError, "one of sudoku, maze, arc"),
        ({"task": "arc", "augment": 2}, trm_wgpu.InputError, "ARC variants need the 30 x 30 canvas"),
        ({"schedule": "fast"}, trm_wgpu.InputError, "schedule"),
        ({"steps": -1}, OverflowError, None),
    ],
)
def test_bad_options_raise_with_the_crates_message(sudoku, kwargs, error, message):
    with pytest.raises(error, match=message):
        sudoku.solve(sudoku_puzzles(2), **{"backend": "cpu", **kwargs})


def test_bad_inputs_raise_with_the_crates_message(sudoku):
    x = sudoku_puzzles(2)
    with pytest.raises(TypeError, match="array of integers, not of dtype float64"):
        sudoku.solve(x.astype(np.float64), backend="cpu")
    with pytest.raises(trm_wgpu.InputError, match="2 dimensions"):
        sudoku.solve(x[0], backend="cpu")
    with pytest.raises(trm_wgpu.InputError, match="seq_len 81"):
        sudoku.solve(x[:, :80], backend="cpu")
    bad = x.copy()
    bad[1, 7] = 11
    with pytest.raises(trm_wgpu.InputError,
                       match="token id 11 of puzzle 1 at position 7 is outside the vocabulary"):
        sudoku.solve(bad, backend="cpu")
    with pytest.raises(trm_wgpu.InputError, match="puzzle identifier 1 of puzzle 0"):
        sudoku.solve(x, [1, 0], backend="cpu")
    with pytest.raises(trm_wgpu.InputError, match="puzzle_identifiers has shape"):
        sudoku.solve(x, [0, 0, 0], backend="cpu")


def test_bad_checkpoints_raise_with_the_crates_message(tmp_path):
    with pytest.raises(trm_wgpu.TrmError, match="nowhere.safetensors"):
        trm_wgpu.load(tmp_path / "nowhere.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(trm_wgpu.TrmError, match="not a valid safetensors file"):
        trm_wgpu.load(garbage)
    with pytest.raises(trm_wgpu.InputError, match="precision"):
        trm_wgpu.load(SUDOKU_EASY / "model.safetensors", precision="f8")
    with pytest.raises(trm_wgpu.InputError, match="config= and dataset= go with"):
        trm_wgpu.load(SUDOKU_EASY / "model.safetensors", config=tmp_path / "x.yaml")
    # a step_N file alone: its all_config.yaml is needed
    step = tmp_path / "step_5"
    step.write_bytes((GOLDEN / "official" / "step_1000").read_bytes())
    with pytest.raises(trm_wgpu.InputError, match="needs its all_config.yaml"):
        trm_wgpu.load(step)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(trm_wgpu.TrmError, match="without step_N checkpoints"):
        trm_wgpu.load(empty)


def test_adapters_list_what_wgpu_finds():
    adapters = trm_wgpu.adapters()
    assert isinstance(adapters, list)
    for adapter in adapters:
        assert {"name", "api", "device_type", "driver", "unsuitable"} <= set(adapter)
    with pytest.raises(trm_wgpu.InputError):
        trm_wgpu.adapters("cuda")


def test_solves_release_the_gil(sudoku):
    x = sudoku_puzzles(40)
    sudoku.solve(x[:1], backend="cpu", steps=1, threads=1)  # the engine, built
    span = {}

    def solve():
        started = time.perf_counter()
        sudoku.solve(x, backend="cpu", steps=4, threads=1)
        span["seconds"] = time.perf_counter() - started

    worker = threading.Thread(target=solve)
    # from before the start to after the end: a solve that took the GIL at
    # once would stall the loop before its first tick
    ticks = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        sum(range(2000))  # Python work: it needs the GIL
    worker.join()
    ticks.append(time.perf_counter())
    gaps = np.diff(ticks)
    # a solve holding the GIL would stall this loop for its whole length
    assert span["seconds"] > 0.2, span
    assert gaps.max() < span["seconds"] / 2, (gaps.max(), span)


@pytest.mark.skipif(sys.platform == "win32", reason="DX12 exists on Windows")
def test_auto_falls_back_to_the_cpu_with_a_warning(monkeypatch):
    # no adapter on the API WGPU_BACKEND names (DX12 is Windows' alone)
    monkeypatch.setenv("WGPU_BACKEND", "dx12")
    model = trm_wgpu.load(SUDOKU_EASY / "model.safetensors")
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        out = model.solve(sudoku_puzzles(2), steps=1)
    assert out["logits"].shape == (2, 81, 11)
    assert model.describe().startswith("cpu")
    with pytest.raises(trm_wgpu.TrmError):
        model.solve(sudoku_puzzles(2), backend="gpu", steps=1)
