//! The GPU engine with its block weights stored at f16, bf16 and int8
//! (packed in `u32` words, widened in the shader), against the CPU engine
//! on the same model: the CPU engine widens the same stored weights, so the
//! two must agree within the f32 tests' bounds (`gpu_checks::compare`), and
//! both with the float64 implementation run on those weights.
//! Both variants (MLP-mixer; attention with RoPE and with learned
//! positions), HRM, both schedules, odd sizes (D not a multiple of 4, S
//! odd), NaN-poisoned buffers; and the device's weight buffer shrinks with
//! the precision, as the binding limit counts it. f32 is what every other
//! GPU test runs.
//!
//! Small models only: CI runs these on lavapipe (the kernels on the CPU),
//! where compiling a pipeline per precision costs more than running it.

mod common;

use std::sync::Arc;

use common::gpu_checks::{
    MAX_ABS, REL_L2, RandomModel, compare, cpu_solve, matches_the_cpu_engine, random_batch,
};
use common::{assert_close, f64_reference, gpu};
use trm_wgpu::{Engine, GpuEngine, PosEncodings, Precision, SolveOptions, TrmConfig, TrmModel};

/// The reduced precisions: f32 is every other GPU test's.
const REDUCED: [Precision; 3] = [Precision::F16, Precision::Bf16, Precision::Int8];

/// `random` at each reduced precision against the CPU engine on both
/// schedules (from the start and one step from a carry), and against the
/// float64 implementation on the same dequantized weights. `false` when
/// there is no GPU (`TRM_SKIP_GPU=1`).
fn every_precision_matches(random: &RandomModel) -> bool {
    let model = random.model();
    let batch = random.batch();
    for precision in REDUCED {
        let label = format!("{precision}, {}", random.label());
        eprintln!("{label}");
        let model = model.to_precision(precision).unwrap();
        assert_eq!(model.precision(), precision);
        if !matches_the_cpu_engine(&label, &model, &batch) {
            return false;
        }
        // and the float64 implementation on the same dequantized weights
        let reference = f64_reference::solve(&model, &batch, random.act_steps, false);
        let mut engine = gpu::engine(&model).unwrap();
        let got = engine.solve(&batch, &SolveOptions::default()).unwrap();
        let label = format!("{label}, GPU vs float64");
        assert_close(&label, &got.logits, &reference.logits, REL_L2, MAX_ABS);
        assert_close(&label, &got.z_h, &reference.z_h, REL_L2, MAX_ABS);
    }
    true
}

/// MLP-mixer, S = 13 and D = 18 (odd S; rows of 13, 18 and TI, CI padded
/// to groups of 4), two layers, three puzzles.
#[test]
fn mlp_mixer_at_every_precision_matches_the_cpu_engine() {
    every_precision_matches(&RandomModel {
        seed: 81,
        seq_len: 13,
        hidden: 18,
        heads: None,
        layers: 2,
        batch: 3,
        expansion: 2.0,
        h_cycles: 1,
        l_cycles: 2,
        puzzle_emb_ndim: 0,
        puzzle_ids: 1,
        pos: PosEncodings::None,
        act_steps: 2,
    });
}

/// Attention with D = 30: RoPE (its f32 tables after the packed layers),
/// 3 heads of 10, S = 13; then learned positions over a puzzle embedding,
/// 2 heads of 15, P = 2, S = 21.
#[test]
fn attention_at_every_precision_matches_the_cpu_engine() {
    for (seed, seq_len, heads, pos, puzzle_emb_ndim, puzzle_ids) in [
        (82, 13, 3, PosEncodings::Rope, 0, 1),
        (83, 19, 2, PosEncodings::Learned, 50, 3),
    ] {
        let random = RandomModel {
            seed,
            seq_len,
            hidden: 30,
            heads: Some(heads),
            layers: 2,
            batch: 2,
            expansion: 2.5,
            h_cycles: 1,
            l_cycles: 1,
            puzzle_emb_ndim,
            puzzle_ids,
            pos,
            act_steps: 2,
        };
        if !every_precision_matches(&random) {
            return;
        }
    }
}

/// HRM (two networks in one weight buffer: the H level's blocks start
/// after the L level's, at offsets that int8's scales move), MLP-mixer
/// with 1 + 2 blocks, at bf16 and int8.
#[test]
fn hrm_at_reduced_precisions_matches_the_cpu_engine() {
    let json = serde_json::json!({
        "arch": "hrm",
        "seq_len": 13,
        "vocab_size": 7,
        "num_puzzle_identifiers": 3,
        "hidden_size": 18,
        "expansion": 2.5,
        "num_heads": 2,
        "H_cycles": 2,
        "L_cycles": 1,
        "L_layers": 1,
        "H_layers": 2,
        "halt_max_steps": 2,
        "mlp_t": true,
        "pos_encodings": "none",
        "puzzle_emb_ndim": 0,
    });
    let config = TrmConfig::from_json(&json.to_string()).unwrap();
    let model = TrmModel::random(config.clone(), 84, 0.5).unwrap();
    let batch = random_batch(&config, 2, 84);
    for precision in [Precision::Bf16, Precision::Int8] {
        let label = format!("{precision}, HRM {}", config.to_json());
        if !matches_the_cpu_engine(&label, &model.to_precision(precision).unwrap(), &batch) {
            return;
        }
    }
}

/// S = 16, D = 32 (2 heads of 16 for attention), two layers: rows of
/// multiples of 4, so the packed layout has no padding.
fn small_config(mlp_t: bool, pos: PosEncodings) -> TrmConfig {
    let json = serde_json::json!({
        "seq_len": 16,
        "vocab_size": 7,
        "hidden_size": 32,
        "num_heads": 2,
        "expansion": 2.0,
        "H_cycles": 1,
        "L_cycles": 1,
        "L_layers": 2,
        "halt_max_steps": 1,
        "mlp_t": mlp_t,
        "pos_encodings": pos.as_str(),
    });
    TrmConfig::from_json(&json.to_string()).unwrap()
}

/// Bytes of the block weights at `precision` as the model stores them
/// (scales included), for sizes whose rows need no padding.
fn stored_layer_bytes(model: &TrmModel) -> u64 {
    model
        .named_matrices()
        .into_iter()
        .filter(|(name, _, _)| name.contains("layers."))
        .map(|(_, _, m)| m.stored_bytes())
        .sum()
}

/// The device holds the blocks at their stored precision: bf16 and f16
/// half the bytes of f32, int8 a quarter plus a scale per row, each equal
/// to what the model stores (rows of multiples of 4, so no padding); the
/// RoPE tables stay f32 beside them.
#[test]
fn the_weight_buffer_shrinks_with_the_precision() {
    for (mlp_t, pos) in [(true, PosEncodings::None), (false, PosEncodings::Rope)] {
        let config = small_config(mlp_t, pos);
        let model = TrmModel::random(config.clone(), 85, 0.5).unwrap();
        // cos and sin [S, HD] in f32
        let tables = if mlp_t { 0 } else { 2 * 16 * 16 * 4 };
        let mut bytes = vec![];
        for precision in Precision::ALL {
            let model = model.to_precision(precision).unwrap();
            let Some(engine) = gpu::engine(&model) else {
                return;
            };
            let on_device = engine.layer_weight_bytes();
            assert_eq!(
                on_device,
                stored_layer_bytes(&model) + tables,
                "{precision}, mlp_t {mlp_t}"
            );
            bytes.push(on_device - tables);
        }
        let [f32, f16, bf16, int8] = bytes[..] else {
            unreachable!()
        };
        assert_eq!(f16 * 2, f32);
        assert_eq!(bf16 * 2, f32);
        // one f32 scale per row
        let rows: u64 = model
            .named_matrices()
            .into_iter()
            .filter(|(name, _, _)| name.contains("layers."))
            .map(|(_, _, m)| m.rows() as u64)
            .sum();
        assert_eq!(int8, f32 / 4 + 4 * rows);
    }
}

/// The weights' binding limit counts the stored bytes: a device whose
/// storage bindings hold the blocks at bf16 but not at f32 refuses the f32
/// model, naming the layer weights, and runs the bf16 one as the CPU does.
#[test]
fn the_binding_limit_counts_the_stored_bytes() {
    let Some(context) = gpu::context() else {
        return;
    };
    let config = small_config(true, PosEncodings::None);
    let model = TrmModel::random(config.clone(), 86, 0.5).unwrap();
    let f32_bytes = gpu::engine_on(&context, &model).layer_weight_bytes();
    let cap = (f32_bytes * 3 / 4) & !255;
    let small = gpu::limited_context(|o| o.max_buffer_bytes(cap));
    let Err(e) = GpuEngine::new(&small, Arc::new(model.clone())) else {
        panic!("{f32_bytes} bytes of f32 weights under a {cap}-byte binding limit");
    };
    assert!(e.to_string().contains("layer weights"), "{e}");
    let bf16 = model.to_precision(Precision::Bf16).unwrap();
    let batch = random_batch(&config, 2, 86);
    let options = SolveOptions::default();
    let want = cpu_solve(&bf16, &batch, &options);
    let mut engine = gpu::engine_on(&small, &bf16);
    assert!(engine.layer_weight_bytes() < cap);
    compare(
        "bf16 under the binding limit",
        &engine.solve(&batch, &options).unwrap(),
        &want,
    );
}

/// The official Sudoku-Extreme shape (D = 512, S = 97, TI = 512, CI = 1536:
/// many tiles and K steps, split-K on the spread schedule) at bf16 and int8,
/// one ACT step of two puzzles on both schedules, against the CPU engine
/// (about 15 GFLOP a schedule: a minute or two on lavapipe).
#[test]
#[ignore = "the official shape: a few minutes on lavapipe"]
fn official_shape_at_bf16_and_int8_matches_the_cpu_engine() {
    let config = TrmConfig::sudoku_extreme();
    let model = TrmModel::random(config.clone(), 87, 0.5).unwrap();
    let batch = random_batch(&config, 2, 87);
    let options = SolveOptions::default().act_steps(1);
    for precision in [Precision::Bf16, Precision::Int8] {
        let model = model.to_precision(precision).unwrap();
        let want = cpu_solve(&model, &batch, &options);
        let Some(engines) = gpu::engines(&model) else {
            return;
        };
        for (schedule, mut engine) in engines {
            let got = engine.solve(&batch, &options).unwrap();
            compare(
                &format!("official shape, {precision}, {schedule}"),
                &got,
                &want,
            );
        }
    }
}
