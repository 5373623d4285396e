//! `trm run` on the GPU end to end: fresh random models of both variants
//! (new weights every run; MLP-mixer, and attention with RoPE, learned and
//! no positions) against the float64 implementation, with the counters of
//! `--stats`; `--backend auto` and `gl`.

mod common;

use std::path::Path;

use common::{
    assert_close, assert_close_floor, f64_reference, gpu, read_output_f32, temp_dir, trm_env,
};
use trm_wgpu::{Arch, Level, PosEncodings, TrmConfig, TrmModel};

const PUZZLES: usize = 3;
const ACT_STEPS: usize = 2;

/// Odd sizes: S = 17 + 2 = 19, D = 22, two layers, a puzzle embedding.
fn config() -> TrmConfig {
    TrmConfig::from_json(
        r#"{"seq_len": 17, "vocab_size": 9, "num_puzzle_identifiers": 3,
            "hidden_size": 22, "expansion": 3, "H_cycles": 2, "L_cycles": 2,
            "L_layers": 2, "halt_max_steps": 2, "mlp_t": true,
            "pos_encodings": "none", "puzzle_emb_ndim": 40, "puzzle_emb_len": 0}"#,
    )
    .unwrap()
}

/// `trm run --stats` with `backend`, writing `out-{backend}.safetensors`
/// in `dir`; returns the output file's bytes and the stats line.
fn run(
    dir: &Path,
    model: &Path,
    input: &Path,
    backend: &str,
    env: &[(&str, &str)],
) -> (Vec<u8>, serde_json::Value) {
    let output = dir.join(format!("out-{backend}.safetensors"));
    common::trm_run_stats(model, input, &output, backend, env)
}

fn stat(stats: &serde_json::Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("--stats lacks `{name}`: {stats}"))
}

/// Runs `model` (fresh weights) through `trm run --backend B --schedule S
/// --stats` for each of `backends` and both schedules, the engine's buffers
/// NaN-poisoned, and checks every output against the float64
/// implementation within 1e-5 relative L2, and the counters: one dispatch
/// per recursion step (fused) or 1 + 6 L, 1 + 8 L phases (spread) plus the
/// embedding and the heads, one submission, nothing read back beyond the
/// outputs.
fn run_gpu_against_float64(model: &TrmModel, seed: u64, tag: &str, backends: &[&str]) {
    let dir = temp_dir(tag);
    let (model_path, input_path, batch) =
        common::write_run_case(&dir, model, PUZZLES, seed ^ 0x5eed);
    let reference = f64_reference::solve(model, &batch, ACT_STEPS, false);
    for backend in backends {
        for schedule in ["fused", "spread"] {
            eprintln!("--backend {backend} --schedule {schedule}");
            // TRM_GPU_SCHEDULE is --schedule; TRM_POISON_GPU fills the
            // engine's buffers with NaN first
            let env = [("TRM_GPU_SCHEDULE", schedule), ("TRM_POISON_GPU", "1")];
            let (bytes, stats) = run(&dir, &model_path, &input_path, backend, &env);
            assert_eq!(stats["schedule"], schedule);
            check_against_float64(model, &reference, &bytes, &stats);
        }
    }
}

/// Whether a fused call of `c` is cut into several dispatches: at the
/// official Sudoku shape (D 512) it is, at these tests' small shapes not.
fn segmented(c: &TrmConfig) -> bool {
    c.hidden_size >= 512
}

fn check_against_float64(
    model: &TrmModel,
    reference: &f64_reference::RefOutput,
    bytes: &[u8],
    stats: &serde_json::Value,
) {
    let c = model.config();
    let (shape, logits) = read_output_f32(bytes, "logits");
    assert_eq!(shape, vec![PUZZLES, c.seq_len, c.vocab_size]);
    assert_close("logits", &logits, &reference.logits, 1e-5, 1e-4);
    let (shape, z_h) = read_output_f32(bytes, "z_H");
    assert_eq!(shape, vec![PUZZLES, c.state_len(), c.hidden_size]);
    assert_close("z_H", &z_h, &reference.z_h, 1e-5, 1e-4);
    assert_close(
        "z_L",
        &read_output_f32(bytes, "z_L").1,
        &reference.z_l,
        1e-5,
        1e-4,
    );
    for name in ["q_halt_logits", "q_continue_logits"] {
        let expected = if name == "q_halt_logits" {
            &reference.q_halt_logits
        } else {
            &reference.q_continue_logits
        };
        assert_close_floor(
            name,
            &read_output_f32(bytes, name).1,
            expected,
            1e-5,
            1e-4,
            1.0,
        );
    }
    assert_eq!(
        read_output_f32(bytes, "steps").1,
        vec![ACT_STEPS as f32; PUZZLES]
    );

    // one dispatch per recursion step (fused) or its phases (spread), plus
    // the embedding and the heads
    let recursion_steps = (ACT_STEPS * c.h_cycles * (c.l_cycles + 1)) as u64;
    assert_eq!(stats["engine"], "gpu");
    assert_eq!(stat(stats, "recursion_steps"), recursion_steps);
    // (HRM: each level's call has its own depth)
    let per_call = |level: Level| -> u64 {
        if stats["schedule"] == "fused" {
            // the call's segments (src/gpu/budget.rs): one where the whole
            // call fits the loop budget, as at these tests' small shapes;
            // more at the official ones
            let segments = stat(stats, "dispatches_per_net_call");
            assert_eq!(segments > 1, segmented(c), "{segments} segments a call");
            return segments;
        }
        let per_layer = if c.mlp_t {
            6
        } else if c.pos_encodings == PosEncodings::Rope {
            8
        } else {
            7
        };
        1 + per_layer * c.level_layers(level).len() as u64
    };
    let (l_call, h_call) = (per_call(Level::L), per_call(Level::H));
    assert_eq!(stat(stats, "dispatches_per_net_call"), l_call.max(h_call));
    let per_act = (c.h_cycles * c.l_cycles) as u64 * l_call + c.h_cycles as u64 * h_call;
    assert_eq!(stat(stats, "dispatches"), ACT_STEPS as u64 * per_act + 2);
    assert_eq!(stat(stats, "submits"), 1);
    // nothing read back beyond the outputs
    let outputs = PUZZLES * (c.seq_len * c.vocab_size + 2 + 2 * c.state_len() * c.hidden_size) * 4;
    assert_eq!(stat(stats, "bytes_read_back"), outputs as u64);
}

/// Fresh random models at the official Sudoku shape (S 97 with 16
/// puzzle-embedding positions, D 512, two layers), MLP-mixer and attention
/// with RoPE, one recursion of each network per ACT step: a fused call is
/// far beyond the loop budget there, so it runs as several segments, which
/// Mesa 22.3's lavapipe got wrong as one dispatch (src/gpu/budget.rs).
#[test]
fn run_gpu_official_shapes_match_float64_on_both_schedules() {
    if gpu::context().is_none() {
        return;
    }
    for mlp_t in [true, false] {
        let seed = common::test_seed();
        let config = TrmConfig {
            h_cycles: 1,
            l_cycles: 1,
            halt_max_steps: ACT_STEPS,
            mlp_t,
            pos_encodings: if mlp_t {
                PosEncodings::None
            } else {
                PosEncodings::Rope
            },
            num_puzzle_identifiers: 3,
            ..TrmConfig::sudoku_extreme()
        };
        eprintln!("official shape, mlp_t {mlp_t}");
        let model = TrmModel::random(config, seed, 0.5).unwrap();
        let tag = format!("gpu-cli-official-{mlp_t}");
        run_gpu_against_float64(&model, seed, &tag, &["gpu"]);
    }
}

#[test]
fn run_gpu_matches_float64_on_both_schedules() {
    if gpu::context().is_none() {
        return;
    }
    let seed = common::test_seed();
    let model = TrmModel::random(config(), seed, 0.5).unwrap();
    run_gpu_against_float64(&model, seed, "gpu-cli", &["gpu"]);
}

/// The attention variant with `pos`: S = 17 + 2 = 19 (a puzzle embedding of
/// 40 zero-padded to 2 positions of 24), D = 24, two layers; 2 heads of 12
/// with RoPE, 3 heads of 8 otherwise.
fn attention_config(pos: PosEncodings) -> TrmConfig {
    let mut c = config();
    c.mlp_t = false;
    c.hidden_size = 24;
    c.num_heads = if pos == PosEncodings::Rope { 2 } else { 3 };
    c.pos_encodings = pos;
    c.validate().unwrap();
    c
}

/// Fresh random attention models that no test has seen (new weights every
/// run): RoPE, learned positions, none; the RoPE model also on GL
/// (llvmpipe through EGL without a GPU), the other shader translation.
#[test]
fn run_gpu_attention_matches_float64_on_both_schedules() {
    if gpu::context().is_none() {
        return;
    }
    for pos in [
        PosEncodings::Rope,
        PosEncodings::Learned,
        PosEncodings::None,
    ] {
        let seed = common::test_seed();
        eprintln!("attention, pos_encodings {}", pos.as_str());
        let model = TrmModel::random(attention_config(pos), seed, 0.5).unwrap();
        let backends: &[&str] = if pos == PosEncodings::Rope {
            &["gpu", "gl"]
        } else {
            &["gpu"]
        };
        let tag = format!("gpu-cli-attention-{}", pos.as_str());
        run_gpu_against_float64(&model, seed, &tag, backends);
    }
}

/// Fresh random HRM models (H_layers != L_layers; RoPE, then learned
/// positions) through `trm run` on the GPU against float64.
#[test]
fn run_gpu_hrm_matches_float64_on_both_schedules() {
    if gpu::context().is_none() {
        return;
    }
    for (pos, l_layers, h_layers) in [(PosEncodings::Rope, 1, 2), (PosEncodings::Learned, 2, 1)] {
        let seed = common::test_seed();
        let config = TrmConfig {
            arch: Arch::Hrm,
            l_layers,
            h_layers,
            ..attention_config(pos)
        };
        eprintln!("HRM, {}", config.to_json());
        let model = TrmModel::random(config, seed, 0.5).unwrap();
        let tag = format!("gpu-cli-hrm-{}", pos.as_str());
        run_gpu_against_float64(&model, seed, &tag, &["gpu"]);
    }
}

/// The kernels' reductions (the norms over D, the attention's softmax) on
/// every path: subgroup shuffles where the adapter has subgroups, at the
/// cluster widths the kernels find (lavapipe's subgroups are its SIMD
/// width / 32: 4 at `LP_NATIVE_VECTOR_WIDTH=128`, 8 by default, 16 at 512;
/// other drivers ignore the variable; a mutation of each shuffle path was
/// seen to fail here), and workgroup memory alone with
/// `TRM_GPU_SUBGROUPS=off`; fresh random models of both variants, both
/// schedules, against float64. `--stats` says which path ran.
#[test]
fn run_gpu_reductions_match_float64_at_every_lane_width() {
    let Some(context) = gpu::context() else {
        return;
    };
    let offered = context.subgroups();
    for (mlp, pos) in [(true, PosEncodings::None), (false, PosEncodings::Rope)] {
        let seed = common::test_seed();
        let config = if mlp { config() } else { attention_config(pos) };
        let model = TrmModel::random(config, seed, 0.5).unwrap();
        let dir = temp_dir(&format!("gpu-cli-lanes-{mlp}"));
        let (model_path, input_path, batch) =
            common::write_run_case(&dir, &model, PUZZLES, seed ^ 0x1a5e);
        let reference = f64_reference::solve(&model, &batch, ACT_STEPS, false);
        // (lavapipe's default 256 bits, clusters of 8, is what every other
        // GPU test runs)
        // the width the kernels must report reaching (on lavapipe; other
        // adapters ignore the variable and report their own)
        let lavapipe = context.adapter_info().name.starts_with("llvmpipe");
        let lane_cases: [(&str, &str, bool, u64); 3] = [
            ("TRM_GPU_SUBGROUPS", "off", false, 1),
            ("LP_NATIVE_VECTOR_WIDTH", "128", offered, 4),
            ("LP_NATIVE_VECTOR_WIDTH", "512", offered, 16),
        ];
        for (variable, value, subgroups, width) in lane_cases {
            for schedule in ["fused", "spread"] {
                eprintln!("mlp_t {mlp}, {variable}={value}, --schedule {schedule}");
                // Mesa's shader cache does not key on the vector width: a
                // kernel cached at 256 bits would run (correctly, at its own
                // width, which the kernels check) at 512
                let env = [
                    ("TRM_GPU_SCHEDULE", schedule),
                    ("TRM_POISON_GPU", "1"),
                    ("MESA_SHADER_CACHE_DISABLE", "true"),
                    (variable, value),
                ];
                let (bytes, stats) = run(&dir, &model_path, &input_path, "gpu", &env);
                assert_eq!(stats["schedule"], schedule);
                assert_eq!(stats["subgroups"], subgroups, "{variable}={value}");
                let kernel = if schedule == "fused" {
                    "fused"
                } else {
                    "spread_norm"
                };
                let reached = stats["lanes"][kernel].as_u64();
                if lavapipe || !subgroups {
                    let want = if subgroups { width } else { 1 };
                    assert_eq!(
                        reached,
                        Some(want),
                        "{variable}={value}: {}",
                        stats["lanes"]
                    );
                }
                check_against_float64(&model, &reference, &bytes, &stats);
            }
        }
    }
}

/// `auto` takes the GPU when there is one; it and `gl` (llvmpipe through
/// EGL on a machine without a GPU) give the CPU engine's answers.
#[test]
fn run_auto_and_gl_backends() {
    if gpu::context().is_none() {
        return;
    }
    let seed = common::test_seed();
    let model = TrmModel::random(config(), seed, 0.5).unwrap();
    let dir = temp_dir("gpu-cli-backends");
    let (model_path, input_path, _) = common::write_run_case(&dir, &model, PUZZLES, seed);
    let (cpu, stats) = run(&dir, &model_path, &input_path, "cpu", &[]);
    assert_eq!(stats["engine"], "cpu");
    let cpu_logits = read_output_f32(&cpu, "logits").1;
    let (auto, stats) = run(&dir, &model_path, &input_path, "auto", &[]);
    // a GPU context exists (checked above): auto must not fall back
    assert_eq!(stats["engine"], "gpu", "auto fell back: {stats}");
    let logits = read_output_f32(&auto, "logits").1;
    assert_close("auto vs cpu logits", &logits, &cpu_logits, 1e-5, 1e-4);
    let (gl, stats) = run(&dir, &model_path, &input_path, "gl", &[]);
    assert_eq!(stats["engine"], "gpu");
    assert_eq!(stats["api"], "gl");
    let logits = read_output_f32(&gl, "logits").1;
    assert_close("gl vs cpu logits", &logits, &cpu_logits, 1e-5, 1e-4);
    // WGPU_BACKEND picks the API of `--backend gpu`
    let (_, stats) = run(
        &dir,
        &model_path,
        &input_path,
        "gpu",
        &[("WGPU_BACKEND", "gl")],
    );
    assert_eq!(stats["api"], "gl");
}

/// Up to four ACT steps of weights at block scale 0.9, less contractive
/// than `REL_L2`'s models (so that the puzzles halt at different steps):
/// two float32 engines drift apart by up to 1.03e-5 relative L2 and 8.7e-5
/// on one logit (seed 1796559819591592796, the fused schedule against the
/// CPU engine); three times that.
const HALT_REL_L2: f64 = 3e-5;
const HALT_MAX_ABS: f64 = 3e-4;

/// `trm run --halt` on the GPU, Vulkan and GL, both schedules: halting is
/// decided on the device (indirect dispatches), and every puzzle stops at
/// the CPU engine's step with that step's outputs.
#[test]
fn run_halt_decides_on_the_device_as_the_cpu_does() {
    if gpu::context().is_none() {
        return;
    }
    let seed = common::test_seed();
    let mut c = config();
    c.halt_max_steps = 4;
    let base = TrmModel::random(c, seed, 0.9).unwrap();
    let dir = temp_dir("gpu-cli-halt");
    let puzzles = 5;
    let (_, _, batch) = common::write_run_case(&dir, &base, puzzles, seed);
    let (model, expected) = common::gpu_checks::halting_model(&base, &batch, 4);
    eprintln!("halting steps {expected:?}");
    let (model_path, input_path, _) = common::write_run_case(&dir, &model, puzzles, seed);
    let run_halt = |backend: &str, schedule: &str| {
        let output = dir.join(format!("halt-{backend}-{schedule}.safetensors"));
        let out = trm_env(
            &[
                "run",
                "--model",
                model_path.to_str().unwrap(),
                "--input",
                input_path.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
                "--backend",
                backend,
                "--halt",
            ],
            &[("TRM_GPU_SCHEDULE", schedule), ("TRM_POISON_GPU", "1")],
        );
        assert!(
            out.status.success(),
            "{backend} {schedule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&output).unwrap()
    };
    let cpu = run_halt("cpu", "auto");
    let steps: Vec<u32> = read_output_f32(&cpu, "steps")
        .1
        .iter()
        .map(|&s| s as u32)
        .collect();
    assert_eq!(steps, expected);
    for backend in ["vulkan", "gl"] {
        for schedule in ["fused", "spread"] {
            let gpu = run_halt(backend, schedule);
            let label = format!("--halt {backend} {schedule}");
            assert_eq!(
                read_output_f32(&gpu, "steps").1,
                read_output_f32(&cpu, "steps").1,
                "{label}"
            );
            for name in ["logits", "z_H", "z_L"] {
                assert_close(
                    &format!("{label} {name}"),
                    &read_output_f32(&gpu, name).1,
                    &read_output_f32(&cpu, name).1,
                    HALT_REL_L2,
                    HALT_MAX_ABS,
                );
            }
        }
    }
}

/// `trm check` compares every variant with the CPU engine, one line each,
/// and passes here; where the driver cuts long loops short (Mesa 22.3's
/// lavapipe), it fails without the loop budget (the engine before the fix)
/// and passes with it.
#[test]
fn check_passes_and_finds_a_driver_that_cuts_loops_short() {
    let Some(context) = gpu::context() else {
        return;
    };
    let check = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["check", "--precision", "f32"];
        args.extend_from_slice(extra);
        let out = trm_env(&args, env);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        (out.status.success(), stdout)
    };
    let limit = trm_wgpu::gpu::loop_limit(&context).unwrap();
    let (passed, stdout) = check(if limit.is_some() { &[] } else { &["--quick"] }, &[]);
    assert!(passed, "trm check failed on {}", context.describe());
    // two schedules of five small variants (and of the two official shapes)
    let lines = stdout.lines().filter(|l| l.ends_with(" ok")).count();
    assert_eq!(lines, if limit.is_some() { 14 } else { 10 }, "{stdout}");
    if limit.is_some() {
        let (passed, stdout) = check(&[], &[("TRM_GPU_LOOP_BUDGET", "none")]);
        assert!(!passed, "without the loop budget the check must fail here");
        let failed: Vec<&str> = stdout.lines().filter(|l| l.ends_with("FAILED")).collect();
        assert!(
            !failed.is_empty()
                && failed
                    .iter()
                    .all(|l| l.contains("D 512") && l.contains("fused")),
            "{stdout}"
        );
    }
}

/// A model file claiming a million tokens (attention without position
/// encodings or with RoPE, hidden size 8) on the GPU: the engine refuses it
/// in one error line, exit code 1, within seconds, on every device and
/// before anything of its size is allocated: an attention tile over
/// S = 1,000,000 runs more loop iterations in one invocation than the loop
/// budget every driver runs right (`src/gpu/budget.rs`; a kernel that
/// cannot be cut, so `TRM_GPU_LOOP_BUDGET` does not lift it).
#[test]
fn run_gpu_refuses_a_million_token_model_in_seconds() {
    if gpu::context().is_none() {
        return;
    }
    for pos in [PosEncodings::None, PosEncodings::Rope] {
        let model = common::million_token_model(pos);
        let dir = temp_dir("gpu-cli-million-tokens");
        let (model_path, input_path, _) = common::write_run_case(&dir, &model, 1, 5);
        let output = dir.join("out.safetensors");
        let args = [
            "run",
            "-m",
            model_path.to_str().unwrap(),
            "-i",
            input_path.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--backend",
            "gpu",
        ];
        common::assert_refused_in_seconds(&args, "loop iterations in an invocation", 30.0);
        let out = common::trm_env(&args, &[("TRM_GPU_LOOP_BUDGET", "none")]);
        common::assert_one_error_line(&out, "loop iterations in an invocation");
    }
}
