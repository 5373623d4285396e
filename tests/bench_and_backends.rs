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
        h_layers: 0,
        arch: Default::default(),
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
        assert!(matches!(a.tile_depth, Some(8) | Some(16)), "{a:?}");
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
    assert!(rows.iter().all(|r| r["arch"] == "trm"), "{rows:?}");
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

/// Saves the small model where `trm bench --model` reads it.
fn small_model_file(name: &str) -> std::path::PathBuf {
    let path = temp_dir(name).join("m.safetensors");
    small_model().save(&path).unwrap();
    path
}

/// Runs `trm bench ARGS`; its stdout, after checking that it succeeded and
/// wrote nothing to stderr (no stray line in the middle of the table).
fn bench_ok(args: &[&str]) -> String {
    let out = Command::new(common::trm_bin())
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_rows(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The series `--plot` draws: backend, adapter, api and requested schedule.
fn series_of(row: &serde_json::Value) -> String {
    format!(
        "{} {} {} {}",
        row["backend"], row["adapter"], row["api"], row["schedule_requested"]
    )
}

#[test]
fn bench_draws_the_curve_one_line_per_series() {
    let model = small_model_file("bench_plot");
    let svg = model.with_file_name("curve.svg");
    let stdout = bench_ok(&[
        "--model",
        model.to_str().unwrap(),
        "--max-batch",
        "4",
        "--seconds",
        "0.05",
        "--budget",
        "30",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let rows = json_rows(&stdout);
    // the CPU at 1 and 8 (8 > --max-batch 4: 1 only), every adapter on the
    // curve 1, 2, 4 with the schedule auto resolved per row
    let cpu: Vec<_> = rows.iter().filter(|r| r["backend"] == "cpu").collect();
    assert_eq!(cpu.len(), 1, "{rows:?}");
    assert_eq!(cpu[0]["schedule"], "-");
    let mut series: Vec<String> = rows.iter().map(series_of).collect();
    series.dedup();
    if common::gpu::context().is_some() {
        assert!(series.len() >= 2, "{rows:?}");
    }
    for s in &series {
        let gpu: Vec<_> = rows
            .iter()
            .filter(|r| &series_of(r) == s && r["backend"] == "gpu")
            .collect();
        if gpu.is_empty() {
            continue;
        }
        let batches: Vec<u64> = gpu.iter().map(|r| r["batch"].as_u64().unwrap()).collect();
        assert_eq!(batches, [1, 2, 4], "{s}: {gpu:?}");
        for r in &gpu {
            assert_eq!(r["schedule_requested"], "auto", "{r}");
            assert!(r["schedule"] == "fused" || r["schedule"] == "spread", "{r}");
            let below = r["spread_below"]
                .as_u64()
                .expect("auto names its crossover");
            let expected = if r["batch"].as_u64().unwrap() < below {
                "spread"
            } else {
                "fused"
            };
            assert_eq!(r["schedule"], expected, "{r}");
        }
    }

    // a parseable SVG: one line (a polyline of width 2) per series, each
    // series named in the legend, the title naming the shape
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let lines: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .collect();
    assert_eq!(lines.len(), series.len(), "{series:?}\n{text}");
    for line in &lines {
        let points = line.attribute("points").unwrap().split_whitespace().count();
        assert!(points >= 1, "{text}");
    }
    let mut colors: Vec<_> = lines.iter().map(|l| l.attribute("stroke")).collect();
    colors.sort();
    colors.dedup();
    assert_eq!(colors.len(), series.len(), "a color per series");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("D = 12, S = 9") && t.contains("m.safetensors")),
        "{texts:?}"
    );
    for row in &rows {
        let adapter = row["adapter"].as_str().unwrap();
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with(row["backend"].as_str().unwrap()) && t.contains(adapter)),
            "{adapter} not in the legend: {texts:?}"
        );
    }
    assert!(
        texts.iter().any(|t| t == "net calls per second"),
        "{texts:?}"
    );
}

#[test]
fn bench_rows_carry_the_schedule_that_ran() {
    if common::gpu::context().is_none() {
        return;
    }
    let model = small_model_file("bench_schedules");
    let rows = json_rows(&bench_ok(&[
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "gpu",
        "--batch",
        "1,3",
        "--schedule",
        "fused,spread",
        "--seconds",
        "0.05",
        "--json",
    ]));
    // explicit --batch keeps its meaning: those sizes, a row per schedule
    let adapters = list_adapters(GpuBackend::Any)
        .into_iter()
        .filter(|a| a.can_run())
        .count();
    assert_eq!(rows.len(), adapters * 2 * 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row["schedule"], row["schedule_requested"], "{row}");
        assert!(row["batch"] == 1 || row["batch"] == 3, "{row}");
        let per_call = row["dispatches_per_net_call"].as_u64().unwrap();
        if row["schedule"] == "fused" {
            assert_eq!(per_call, 1, "{row}");
            assert_eq!(row["workgroups_per_dispatch"]["max"], row["batch"], "{row}");
        } else {
            assert_eq!(row["schedule"], "spread", "{row}");
            assert!(per_call > 1, "{row}");
        }
        for key in ["submits", "host_waits", "gpu_ms_per_step", "spread_below"] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
        assert!(row["submits"].as_u64().unwrap() >= 1, "{row}");
    }
}

#[test]
fn bench_tune_reports_a_crossover_that_spread_below_applies() {
    let model = small_model_file("bench_tune");
    let m = model.to_str().unwrap();
    if common::gpu::context().is_none() {
        // no adapter: one error line, no panic
        let out = common::trm(&["bench", "--model", m, "--tune"]);
        common::assert_one_error_line(&out, "--tune");
        return;
    }
    let args = [
        "--model",
        m,
        "--tune",
        "--max-batch",
        "8",
        "--seconds",
        "0.05",
    ];
    let text = bench_ok(&args);
    let crossovers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("crossover: "))
        .collect();
    assert!(!crossovers.is_empty(), "{text}");
    for line in &crossovers {
        assert!(line.contains("spread below "), "{line}");
    }
    let rows = json_rows(&bench_ok(&[&args[..], &["--json"]].concat()));
    let tunes: Vec<_> = rows.iter().filter_map(|r| r.get("tune")).collect();
    assert_eq!(tunes.len(), crossovers.len(), "{rows:?}");
    for tune in &tunes {
        let points = tune["points"].as_array().unwrap();
        assert!(!points.is_empty(), "{tune}");
        assert!(
            tune["timer"] == "gpu timestamps" || tune["timer"] == "wall",
            "{tune}"
        );
        // both schedules ran at every batch measured, spread first
        let measured: Vec<_> = rows
            .iter()
            .filter(|r| r["api"] == tune["api"] && r["adapter"] == tune["adapter"])
            .collect();
        assert_eq!(measured.len(), 2 * points.len(), "{tune}");
        match tune["crossover"].as_u64() {
            // fused at least as fast at the crossover, spread faster below
            Some(n) => {
                for p in points {
                    let (f, s) = (
                        p["fused_ms_per_step"].as_f64().unwrap(),
                        p["spread_ms_per_step"].as_f64().unwrap(),
                    );
                    if p["batch"].as_u64().unwrap() == n {
                        assert!(f <= s, "{tune}");
                    }
                }
            }
            None => assert!(
                points
                    .iter()
                    .all(|p| p["fused_ms_per_step"].as_f64() > p["spread_ms_per_step"].as_f64()),
                "{tune}"
            ),
        }
    }

    // --spread-below puts the crossover where it says
    for (below, at_two) in [("2", "fused"), ("3", "spread")] {
        let rows = json_rows(&bench_ok(&[
            "--model",
            m,
            "--backend",
            "gpu",
            "--batch",
            "1,2",
            "--spread-below",
            below,
            "--seconds",
            "0.02",
            "--json",
        ]));
        for row in &rows {
            let expected = if row["batch"] == 1 { "spread" } else { at_two };
            assert_eq!(row["schedule"], expected, "--spread-below {below}: {row}");
            assert_eq!(row["spread_below"].as_u64().unwrap().to_string(), below);
        }
    }
}

/// `trm bench --arch hrm` times HRM at its published shape (D = 512,
/// 4 + 4 blocks, S = 82): one short CPU row.
#[test]
fn bench_times_hrm_at_its_published_shape() {
    let out = Command::new(common::trm_bin())
        .args([
            "bench",
            "--arch",
            "hrm",
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
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("HRM") && text.contains("hrm, D = 512, S = 82"),
        "{text}"
    );
    let json = Command::new(common::trm_bin())
        .args([
            "bench",
            "--arch",
            "hrm",
            "--backend",
            "cpu",
            "--batch",
            "1",
            "--seconds",
            "0.1",
            "--json",
        ])
        .output()
        .unwrap();
    let row: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(row["arch"], "hrm");
    assert!(row["net_calls_per_s"].as_f64().unwrap() > 0.0, "{row}");
}

/// The kernel family the CPU engine's products ran on, as `trm bench --json`
/// (`kernel`) and `trm run --stats` report it, chosen at run time or forced
/// with `TRM_CPU_KERNEL`: `amx-bf16` for a bf16 model with matched
/// activations where the CPU has AMX (`f32` elsewhere, or when forced off
/// it), the integer kernel for an int8 one, `f32` with f32 activations; a
/// kernel the CPU lacks, or a name that is none, is one error line.
#[test]
fn the_cpu_kernel_family_is_reported_and_can_be_forced() {
    let amx = trm_wgpu::Int8Kernel::Amx.available();
    if !amx {
        eprintln!("this CPU (or OS) has no AMX: bf16 rows report f32");
    }
    let dir = temp_dir("cpu-kernels");
    let kernel_of = |model: &TrmModel, activations: &str, env: &[(&str, &str)]| {
        let path = dir.join(format!("{}.safetensors", model.precision()));
        model.save(&path).unwrap();
        let out = common::trm_env(
            &[
                "bench",
                "--model",
                path.to_str().unwrap(),
                "--backend",
                "cpu",
                "--batch",
                "1",
                "--seconds",
                "0.05",
                "--activations",
                activations,
                "--json",
            ],
            env,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = json_rows(&String::from_utf8_lossy(&out.stdout));
        rows[0]["kernel"].as_str().unwrap().to_string()
    };
    let bf16 = small_model()
        .to_precision(trm_wgpu::Precision::Bf16)
        .unwrap();
    let int8 = small_model()
        .to_precision(trm_wgpu::Precision::Int8)
        .unwrap();
    let amx_bf16 = if amx { "amx-bf16" } else { "f32" };
    assert_eq!(kernel_of(&bf16, "matched", &[]), amx_bf16);
    assert_eq!(kernel_of(&bf16, "f32", &[]), "f32");
    assert_eq!(
        kernel_of(&bf16, "matched", &[("TRM_CPU_KERNEL", "portable")]),
        "f32"
    );
    assert_eq!(
        kernel_of(&int8, "matched", &[]),
        trm_wgpu::Int8Kernel::detect().as_str()
    );
    assert_eq!(
        kernel_of(&int8, "matched", &[("TRM_CPU_KERNEL", "portable")]),
        "portable"
    );
    for (choice, kernel) in [
        ("avx-vnni", trm_wgpu::Int8Kernel::AvxVnni),
        ("avx512-vnni", trm_wgpu::Int8Kernel::Vnni512),
        ("amx", trm_wgpu::Int8Kernel::Amx),
    ] {
        if kernel.available() {
            let env = [("TRM_CPU_KERNEL", choice)];
            assert_eq!(kernel_of(&int8, "matched", &env), kernel.as_str());
        } else {
            eprintln!("SKIPPED {choice}: this CPU lacks it");
        }
    }

    // trm run --stats names it too
    let (model_path, input_path, _) = common::write_run_case(&dir, &bf16, 2, 3);
    let run = |env: &[(&str, &str)]| {
        common::trm_env(
            &[
                "run",
                "--model",
                model_path.to_str().unwrap(),
                "--input",
                input_path.to_str().unwrap(),
                "--output",
                dir.join("out.safetensors").to_str().unwrap(),
                "--backend",
                "cpu",
                "--activations",
                "matched",
                "--stats",
            ],
            env,
        )
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stats: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(stats["kernel"], amx_bf16, "{stats}");

    common::assert_one_error_line(&run(&[("TRM_CPU_KERNEL", "avx1024")]), "TRM_CPU_KERNEL");
    if !amx {
        common::assert_one_error_line(&run(&[("TRM_CPU_KERNEL", "amx")]), "no AMX");
    }
}
