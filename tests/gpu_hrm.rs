//! The GPU engine on HRM (`arch = hrm`: z_H updated by a network of its
//! own), both schedules: the authors' HRM outputs (golden `hrm/` cases)
//! at every ACT step, random HRM models of odd sizes with H_layers !=
//! L_layers against the CPU engine, and early halting by HRM's rule
//! (q_halt > q_continue) decided on the device.
//!
//! Buffers are NaN-poisoned before each solve (`GpuRunOptions::poison`).
//! Small models only: lavapipe runs the kernels on the CPU.

mod common;

use common::golden::step_by_step;
use common::gpu_checks::{
    MAX_ABS, REL_L2, counters_show_one_dispatch_per_recursion_step,
    early_halting_matches_the_cpu_engine, matches_the_cpu_engine, random_batch,
};
use common::{gpu, load_case};
use trm_wgpu::{Arch, PosEncodings, TrmConfig, TrmModel};

/// Every ACT step of a golden HRM case, from the engine's own carry, on
/// each schedule: logits, q logits and the carry of every step.
fn every_step(name: &str) {
    let case = load_case(name);
    assert_eq!(case.model.config().arch, Arch::Hrm);
    let Some(engines) = gpu::engines(&case.model) else {
        return;
    };
    for (schedule, mut engine) in engines {
        eprintln!("schedule {schedule}");
        step_by_step(&mut engine, &case, REL_L2, MAX_ABS);
    }
}

/// RoPE over the puzzle position, D = 64, 4 heads, 2 + 2 layers, B = 3.
#[test]
fn hrm_sudoku_rope_every_step() {
    every_step("hrm/hrm_sudoku_rope");
}

/// Learned positions, no puzzle embedding, the published depth (4 + 4
/// layers), L_cycles = 3, B = 2.
#[test]
fn hrm_maze_learned_4x4_every_step() {
    every_step("hrm/hrm_maze_learned_4x4");
}

/// An HRM configuration of odd sizes.
fn hrm_config(
    mlp_t: bool,
    pos: PosEncodings,
    hidden: usize,
    l_layers: usize,
    h_layers: usize,
) -> TrmConfig {
    let json = serde_json::json!({
        "arch": "hrm",
        "seq_len": 13,
        "vocab_size": 7,
        "num_puzzle_identifiers": 3,
        "hidden_size": hidden,
        "expansion": 2.5,
        "num_heads": 2,
        "H_cycles": 2,
        "L_cycles": 2,
        "L_layers": l_layers,
        "H_layers": h_layers,
        "halt_max_steps": 2,
        "mlp_t": mlp_t,
        "pos_encodings": pos.as_str(),
        "puzzle_emb_ndim": hidden + 3,
    });
    TrmConfig::from_json(&json.to_string()).unwrap()
}

/// H_layers != L_layers, each way round: attention with RoPE (1 L-level
/// block, 3 H-level ones), and the MLP-mixer with learned positions (3 and
/// 1), against the CPU engine on both schedules, from the start and from a
/// carry.
#[test]
fn random_hrm_models_match_the_cpu_engine() {
    for (config, seed) in [
        (hrm_config(false, PosEncodings::Rope, 20, 1, 3), 71),
        (hrm_config(true, PosEncodings::Learned, 18, 3, 1), 72),
    ] {
        let model = TrmModel::random(config.clone(), seed, 0.5).unwrap();
        let batch = random_batch(&config, 3, seed);
        let label = format!("seed {seed} config {}", config.to_json());
        if !matches_the_cpu_engine(&label, &model, &batch) {
            return;
        }
    }
}

/// The counters of an HRM solve: a dispatch per network call of either
/// level (fused) or its phases (spread; both levels equally deep here).
#[test]
fn hrm_counters() {
    let config = hrm_config(false, PosEncodings::None, 16, 2, 2);
    counters_show_one_dispatch_per_recursion_step(&TrmModel::random(config, 5, 0.5).unwrap());
}

/// Early halting by HRM's rule, q_halt > q_continue, decided on the
/// device: the same puzzles halt at the same steps as on the CPU.
#[test]
fn hrm_early_halting_matches_the_cpu_engine() {
    let mut config = hrm_config(false, PosEncodings::Rope, 16, 2, 2);
    config.halt_max_steps = 4;
    early_halting_matches_the_cpu_engine(&config, 23);
}
