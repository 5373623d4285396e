"""An independent float64 implementation of TRM inference in NumPy, written
from shared/TRM.md (the authors' computation), and random models to judge
the package by: their weights are drawn here and written in the project's
safetensors format, so nothing of the crate takes part but the solve."""

import json
import math

import numpy as np

import st


def inter(expansion, width):
    """SwiGLU width: 256 * ceil(round(expansion * width * 2 / 3) / 256),
    with Python's round (half to even)."""
    return 256 * math.ceil(round(expansion * width * 2 / 3) / 256)


def puzzle_positions(config):
    """P: the positions the puzzle embedding takes."""
    ndim, d = config["puzzle_emb_ndim"], config["hidden_size"]
    if ndim == 0:
        return 0
    return config["puzzle_emb_len"] or -(-ndim // d)


def tensor_shapes(config):
    """Every weight's canonical name and shape."""
    d, v = config["hidden_size"], config["vocab_size"]
    s = config["seq_len"] + puzzle_positions(config)
    shapes = {
        "inner.embed_tokens.embedding_weight": (v, d),
        "inner.H_init": (d,),
        "inner.L_init": (d,),
        "inner.lm_head.weight": (v, d),
        "inner.q_head.weight": (2, d),
        "inner.q_head.bias": (2,),
    }
    if config["puzzle_emb_ndim"]:
        shapes["inner.puzzle_emb.weights"] = (
            config["num_puzzle_identifiers"],
            config["puzzle_emb_ndim"],
        )
    if config["pos_encodings"] == "learned":
        shapes["inner.embed_pos.embedding_weight"] = (s, d)
    channel = inter(config["expansion"], d)
    for i in range(config["L_layers"]):
        layer = f"inner.L_level.layers.{i}"
        if config["mlp_t"]:
            token = inter(config["expansion"], s)
            shapes[f"{layer}.mlp_t.gate_up_proj.weight"] = (2 * token, s)
            shapes[f"{layer}.mlp_t.down_proj.weight"] = (s, token)
        else:
            shapes[f"{layer}.self_attn.qkv_proj.weight"] = (3 * d, d)
            shapes[f"{layer}.self_attn.o_proj.weight"] = (d, d)
        shapes[f"{layer}.mlp.gate_up_proj.weight"] = (2 * channel, d)
        shapes[f"{layer}.mlp.down_proj.weight"] = (d, channel)
    return shapes


def random_model(path, config, seed, block_scale=0.5):
    """Draws float32 weights for ``config`` (linear layers N(0, 1/fan_in),
    the blocks' scaled by ``block_scale``: 0.5 keeps the recursion
    contractive, see TRM.md, Numerics), writes them with the configuration
    to ``path`` and returns them as float64."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in tensor_shapes(config).items():
        if name.endswith("_init"):
            w = rng.standard_normal(shape)
        elif name.endswith("bias"):
            w = rng.standard_normal(shape) - 2.0
        elif name == "inner.puzzle_emb.weights":
            w = 0.5 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / math.sqrt(shape[-1])
            if ".layers." in name:
                w *= block_scale
        weights[name] = w.astype(np.float32)
    st.write(path, weights, {"config": json.dumps(config)})
    return {k: v.astype(np.float64) for k, v in weights.items()}


def rms_norm(x, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def swiglu(x, gate_up, down):
    g, u = np.split(x @ gate_up.T, 2, axis=-1)
    return (g / (1.0 + np.exp(-g)) * u) @ down.T


def rope_tables(config, s):
    hd = config["hidden_size"] // config["num_heads"]
    inv_freq = config["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
    angle = np.arange(s)[:, None] * inv_freq[None, :]
    angle = np.concatenate([angle, angle], axis=-1)
    return np.cos(angle), np.sin(angle)


def rotate_half(x):
    a, b = np.split(x, 2, axis=-1)
    return np.concatenate([-b, a], axis=-1)


def attention(h, w, layer, config):
    b, s, d = h.shape
    heads = config["num_heads"]
    hd = d // heads
    qkv = h @ w[f"{layer}.self_attn.qkv_proj.weight"].T
    q, k, v = (t.reshape(b, s, heads, hd) for t in np.split(qkv, 3, axis=-1))
    if config["pos_encodings"] == "rope":
        cos, sin = rope_tables(config, s)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
    scores = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(hd)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.einsum("bhqk,bkhe->bqhe", scores, v).reshape(b, s, d)
    return out @ w[f"{layer}.self_attn.o_proj.weight"].T


def block(h, w, i, config):
    eps = config["rms_norm_eps"]
    layer = f"inner.L_level.layers.{i}"
    if config["mlp_t"]:
        t = np.swapaxes(h, 1, 2)  # [B, D, S]: the norm runs over S
        t = rms_norm(
            t
            + swiglu(
                t,
                w[f"{layer}.mlp_t.gate_up_proj.weight"],
                w[f"{layer}.mlp_t.down_proj.weight"],
            ),
            eps,
        )
        h = np.swapaxes(t, 1, 2)
    else:
        h = rms_norm(h + attention(h, w, layer, config), eps)
    mlp = swiglu(h, w[f"{layer}.mlp.gate_up_proj.weight"], w[f"{layer}.mlp.down_proj.weight"])
    return rms_norm(h + mlp, eps)


def net(h, injection, w, config):
    h = h + injection
    for i in range(config["L_layers"]):
        h = block(h, w, i, config)
    return h


def embed(tokens, ids, w, config):
    d = config["hidden_size"]
    e = w["inner.embed_tokens.embedding_weight"][tokens]
    p = puzzle_positions(config)
    if p:
        rows = w["inner.puzzle_emb.weights"][ids]
        padded = np.zeros((len(ids), p * d))
        padded[:, : rows.shape[1]] = rows
        e = np.concatenate([padded.reshape(len(ids), p, d), e], axis=1)
    if config["pos_encodings"] == "learned":
        e = 0.707106781 * (e + w["inner.embed_pos.embedding_weight"])
    return math.sqrt(d) * e


def solve(w, config, tokens, ids, steps):
    """Every output of ``steps`` ACT steps (no halting), float64."""
    tokens = np.asarray(tokens)
    ids = np.zeros(len(tokens), dtype=np.int64) if ids is None else np.asarray(ids)
    x = embed(tokens, ids, w, config)
    y = np.broadcast_to(w["inner.H_init"], x.shape).copy()
    z = np.broadcast_to(w["inner.L_init"], x.shape).copy()
    p = puzzle_positions(config)
    for _ in range(steps):
        for _ in range(config["H_cycles"]):
            for _ in range(config["L_cycles"]):
                z = net(z, y + x, w, config)
            y = net(y, z, w, config)
        logits = (y @ w["inner.lm_head.weight"].T)[:, p:]
        q = y[:, 0] @ w["inner.q_head.weight"].T + w["inner.q_head.bias"]
    return {
        "logits": logits,
        "q_halt_logits": q[:, 0],
        "q_continue_logits": q[:, 1],
        "z_H": y,
        "z_L": z,
        "steps": np.full(len(tokens), steps, dtype=np.int32),
    }


def assert_close(name, got, want, rel_l2, max_abs=None):
    """``got`` against ``want``: relative L2 error at most ``rel_l2`` and,
    if given, no element off by more than ``max_abs``; the message names
    the worst element."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    diff = np.abs(got - want)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    rel = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
    where = f"worst element {tuple(int(i) for i in worst)}: {got[worst]!r} vs {want[worst]!r}"
    assert rel <= rel_l2, f"{name}: relative L2 error {rel:.3g} > {rel_l2:g}; {where}"
    if max_abs is not None:
        assert diff[worst] <= max_abs, f"{name}: max error {diff[worst]:.3g} > {max_abs:g}; {where}"
    return rel, float(diff[worst])
