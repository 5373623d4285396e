//! `trm bench`, the timing of recursion steps, adapter listing and the
//! engine choice of `Backend`.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::temp_dir;
use trm_wgpu::gpu::{GpuBackend, list_adapters};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    AnyEngine, Backend, Engine, EngineOptions, PuzzleBatch, SolveOptions, TrmConfig, TrmModel,
};

fn small_model() -> TrmModel {
    let config = TrmConfig {
        seq_len: 9,
        vocab_size: 5,
        num_puzzle_identifiers: 1,
        hidden_size: 12,
        expansion: 2.0,
        num_heads: 2,
        h_cycles: 2,
        l_cycles: 2,
        l_layers: 1,
        halt_max_steps: 2,
        mlp_t: true,
        pos_encodings: trm_wgpu::PosEncodings::None,
        puzzle_emb_ndim: 0,
        puzzle_emb_len: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
    };
    TrmModel::random(config, 5, 0.5).unwrap()
}

fn batch(config: &TrmConfig, n: usize) -> PuzzleBatch {
    // no puzzle ids: every puzzle is puzzle 0
    let (tokens, _) = common::random_inputs(&mut SplitMix64::new(9), config, n);
    PuzzleBatch::new(config, &tokens, None).unwrap()
}

#[test]
fn adapters_are_listed_with_what_the_engine_needs() {
    if common::gpu::context().is_none() {
        return; // TRM_SKIP_GPU=1 on a machine without an adapter
    }
    let adapters = list_adapters(GpuBackend::Any);
    assert!(!adapters.is_empty());
    let usable: Vec<_> = adapters.iter().filter(|a| a.can_run()).collect();
    assert!(!usable.is_empty(), "{adapters:?}");
    for a in &usable {
        assert!(a.max_compute_invocations_per_workgroup >= 256, "{a:?}");
        assert!(matches!(a.tile_depth, Some(16) | Some(32)), "{a:?}");
        assert!(!a.name.is_empty() && !a.api.is_empty());
    }
}

#[test]
fn timing_runs_the_requested_steps() {
    let model = small_model();
    let Some(mut engine) = common::gpu::engine(&model) else {
        return;
    };
    let b = batch(model.config(), 3);
    let timing = engine.time_recursion_steps(&b, 5).unwrap();
    assert_eq!((timing.steps, timing.batch), (5, 3));
    assert!(timing.wall > std::time::Duration::ZERO);
    // one embedding submission, then the five steps in one pass
    assert_eq!(engine.last_stats().dispatches, 1 + 5);
    if engine
        .context()
        .device()
        .features()
        .contains(trm_wgpu::wgpu::Features::TIMESTAMP_QUERY)
    {
        let gpu = timing.gpu.expect("timestamps where the device has them");
        assert!(
            gpu > std::time::Duration::ZERO && gpu <= timing.wall * 2,
            "{gpu:?} vs {:?}",
            timing.wall
        );
    }
    let too_many = batch(model.config(), engine.chunk_capacity().unwrap() + 1);
    assert!(engine.time_recursion_steps(&too_many, 1).is_err());
}

#[test]
fn backends_build_their_engines() {
    let model = Arc::new(small_model());
    let b = batch(model.config(), 2);
    let options = SolveOptions::default();
    let mut cpu = Backend::Cpu
        .build(model.clone(), &EngineOptions::default().threads(1))
        .unwrap();
    assert!(matches!(
        cpu,
        AnyEngine::Cpu {
            gpu_unavailable: None,
            ..
        }
    ));
    let reference = cpu.solve(&b, &options).unwrap();
    assert_eq!(cpu.stats_json(&reference)["recursion_steps"], 2 * 2 * 3);

    // auto with an adapter that does not exist falls back to the CPU, saying why
    let auto = Backend::Auto
        .build(
            model.clone(),
            &EngineOptions::default().adapter("no such adapter anywhere"),
        )
        .unwrap();
    assert!(
        auto.gpu_unavailable()
            .is_some_and(|e| e.to_string().contains("no such adapter"))
    );

    if common::gpu::context().is_none() {
        return;
    }
    let mut gpu = Backend::Gpu(GpuBackend::Any)
        .build(model.clone(), &EngineOptions::default())
        .unwrap();
    let out = gpu.solve(&b, &options).unwrap();
    let stats = gpu.stats_json(&out);
    assert_eq!(stats["engine"], "gpu");
    assert_eq!(stats["recursion_steps"], 2 * 2 * 3);
    common::assert_close("logits", &out.logits, &reference.logits, 1e-5, 1e-4);
    assert!("tpu".parse::<Backend>().is_err());
}

#[test]
fn bench_prints_a_json_row_per_backend_and_batch() {
    let dir = temp_dir("bench");
    let path = dir.join("m.safetensors");
    small_model().save(&path).unwrap();
    let out = Command::new(common::trm_bin())
        .args([
            "bench",
            "--model",
            path.to_str().unwrap(),
            "--batch",
            "1,2",
            "--seconds",
            "0.2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cpu_rows = rows.iter().filter(|r| r["backend"] == "cpu").count();
    assert_eq!(cpu_rows, 2, "{rows:?}");
    if common::gpu::context().is_some() {
        assert!(rows.iter().any(|r| r["backend"] == "gpu"), "{rows:?}");
    }
    for row in &rows {
        for key in [
            "backend",
            "adapter",
            "batch",
            "net_calls_per_s",
            "gflops",
            "puzzles_per_s",
        ] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
        assert!(row["net_calls_per_s"].as_f64().unwrap() > 0.0, "{row}");
    }
    // and the table form names its columns
    let out = Command::new(common::trm_bin())
        .args([
            "bench",
            "--model",
            path.to_str().unwrap(),
            "--backend",
            "cpu",
            "--batch",
            "1",
            "--seconds",
            "0.1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("net calls/s") && text.contains("GFLOP/s"),
        "{text}"
    );
}
