//! Browser bindings of trm-wgpu: what `web/index.html` calls, through the
//! JavaScript that wasm-bindgen writes into `web/pkg/` (`web/build.sh`).
//!
//! One [`Session`] holds the browser's GPU device (trm-wgpu's
//! `GpuContext` on wgpu's WebGPU backend) and the engines made on it. Every
//! call that touches the GPU returns a promise, since the browser never
//! lets a page block on it; results come back as JSON strings, and errors
//! as `Error`s whose message is trm-wgpu's `TrmError` text.

// Each call holds the session's state across its awaits on purpose: that
// borrow is the lock that refuses a second call while one runs (`take`
// uses `try_borrow_mut`, so nothing can panic on it).
#![allow(clippy::await_holding_refcell_ref)]

use std::cell::{Cell, RefCell, RefMut};
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Function, Promise};
use serde::Serialize;
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use web_time::Instant;

use trm_wgpu::check;
use trm_wgpu::program::Stream;
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::tasks::sudoku::Grid;
use trm_wgpu::{
    Engine, GpuContext, GpuEngine, GpuOptions, GpuRunOptions, GpuSchedule, LoadOptions, Precision,
    PuzzleBatch, SolveOptions, TrmConfig, TrmError, TrmModel,
};

/// A `TrmError` as the `Error` a promise rejects with.
fn js_error(e: TrmError) -> JsValue {
    JsError::new(&e.to_string()).into()
}

fn js_message(message: &str) -> JsValue {
    JsError::new(message).into()
}

/// What a session holds between calls.
struct State {
    ctx: GpuContext,
    /// The loaded model's engine (the solver).
    engine: Option<GpuEngine>,
    /// The bench's engine on the random Sudoku-Extreme model, made once.
    bench: Option<GpuEngine>,
}

/// The browser's GPU with the engines on it.
#[wasm_bindgen]
pub struct Session {
    state: Rc<RefCell<State>>,
    /// Set by [`Session::cancel`]; the running call stops at its next
    /// check (between ACT steps, bench timings, pipeline cases).
    cancel: Rc<Cell<bool>>,
    /// The adapter and the device's limits, as JSON (fixed at open).
    adapter: String,
}

/// The state for one call; a second call while one runs (they await the
/// GPU) is refused rather than interleaved.
fn take(state: &Rc<RefCell<State>>) -> Result<RefMut<'_, State>, JsValue> {
    state
        .try_borrow_mut()
        .map_err(|_| js_message("the GPU is busy with another call; wait for it to finish"))
}

/// What a call rejects with when [`Session::cancel`] stopped it (the page
/// tells it from an error by this text).
const CANCELLED: &str = "cancelled";

/// Rejects once the page asked to cancel (the flag is cleared for the next
/// call).
fn check_cancel(cancel: &Cell<bool>) -> Result<(), JsValue> {
    if cancel.replace(false) {
        Err(js_message(CANCELLED))
    } else {
        Ok(())
    }
}

/// The most ACT steps the page runs (the bundled model was trained with
/// 16; a solve past 64 is minutes on a software GPU).
const MAX_ACT_STEPS: u32 = 64;

/// `message` with `name: ` in front unless it already names the file (the
/// loader's own messages mostly do): each prefix once.
fn named(name: &str, message: &str) -> String {
    if message.starts_with(name) {
        message.to_string()
    } else {
        format!("{name}: {message}")
    }
}

/// Whether the safetensors header of `bytes` has the `config` metadata
/// entry trm-wgpu's model files carry; `None` where the header does not
/// parse (the loader says why).
fn has_embedded_config(bytes: &[u8]) -> Option<bool> {
    let length = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(length).ok()?)?;
    let header: Value = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let header = header.as_object()?;
    Some(
        header
            .get("__metadata__")
            .and_then(|m| m.get("config"))
            .is_some(),
    )
}

/// `{"max_workgroup_memory": bytes, "max_buffer_bytes": bytes}`, both
/// optional, as [`GpuOptions`].
fn gpu_options(options: Option<String>) -> Result<GpuOptions, JsValue> {
    let mut chosen = GpuOptions::default();
    let Some(text) = options.filter(|t| !t.trim().is_empty()) else {
        return Ok(chosen);
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| js_message(&format!("GPU options are not JSON: {e}")))?;
    if let Some(bytes) = value.get("max_workgroup_memory").and_then(Value::as_u64) {
        chosen = chosen.max_workgroup_memory(u32::try_from(bytes).unwrap_or(u32::MAX));
    }
    if let Some(bytes) = value.get("max_buffer_bytes").and_then(Value::as_u64) {
        chosen = chosen.max_buffer_bytes(bytes);
    }
    Ok(chosen)
}

/// The adapter, the limits the device was created with (those the
/// kernels use) and its features.
fn describe_adapter(ctx: &GpuContext) -> String {
    let info = ctx.adapter_info();
    let limits = ctx.limits();
    let features = ctx.device().features();
    json!({
        "name": info.name,
        "vendor": info.vendor,
        "device": info.device,
        "device_type": format!("{:?}", info.device_type),
        "backend": format!("{:?}", info.backend),
        "driver": info.driver,
        "driver_info": info.driver_info,
        "describe": ctx.describe(),
        "limits": {
            "max_buffer_size": limits.max_buffer_size,
            "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
            "max_compute_workgroup_storage_size": limits.max_compute_workgroup_storage_size,
            "max_compute_invocations_per_workgroup": limits.max_compute_invocations_per_workgroup,
            "max_compute_workgroup_size_x": limits.max_compute_workgroup_size_x,
            "max_compute_workgroups_per_dimension": limits.max_compute_workgroups_per_dimension,
            "max_storage_buffers_per_shader_stage": limits.max_storage_buffers_per_shader_stage,
            "min_uniform_buffer_offset_alignment": limits.min_uniform_buffer_offset_alignment,
        },
        "features": {
            "timestamp_query": features.contains(trm_wgpu::wgpu::Features::TIMESTAMP_QUERY),
        },
    })
    .to_string()
}

/// Calls `callback` with `value` as JSON text (progress reports; a
/// callback that throws is ignored, the work goes on).
fn report(callback: &Function, value: &impl Serialize) {
    if let Ok(text) = serde_json::to_string(value) {
        let _ = callback.call1(&JsValue::NULL, &JsValue::from_str(&text));
    }
}

/// One ACT step of a solve, as the page shows it.
#[derive(Serialize)]
struct SolveStep {
    step: usize,
    /// The most ACT steps the solve runs.
    act_steps: usize,
    /// The ACT step at which each puzzle halted (early halting only).
    halted: Vec<Option<usize>>,
    /// Puzzles still running after this step: 0 on the last.
    running: usize,
    /// The answer of each puzzle (81 digits).
    answers: Vec<String>,
    /// The answer tokens of all puzzles, puzzle after puzzle (tokens 2..10
    /// are the digits 1..9), for comparison with PyTorch's.
    tokens: Vec<u32>,
    q_halt: Vec<f32>,
    /// Whether each answer is a valid Sudoku keeping the puzzle's givens.
    valid: Vec<bool>,
    /// Cells of each answer that changed since the previous step.
    changed: Vec<usize>,
    /// Seconds since the solve started.
    seconds: f64,
}

/// A bench row: throughput of one batch size.
#[derive(Serialize)]
struct BenchRow {
    batch: usize,
    schedule: String,
    net_calls: u64,
    wall_seconds: f64,
    gpu_seconds: Option<f64>,
    net_calls_per_second: f64,
    /// FLOPs of one network call for one puzzle, in 10^9.
    gflop_per_net_call: f64,
    /// net_calls_per_second x gflop_per_net_call.
    gflops: f64,
}

/// The random official-shape model's seed (as `trm bench`'s).
const BENCH_SEED: u64 = 0x7e57;

#[wasm_bindgen]
impl Session {
    /// Opens the browser's GPU. `options`: JSON, see `gpu_options`
    /// (without them the device gets the adapter's largest buffers and
    /// workgroup memory, as natively).
    pub async fn open(options: Option<String>) -> Result<Session, JsValue> {
        let options = gpu_options(options)?;
        let ctx = GpuContext::new_async(&options).await.map_err(js_error)?;
        let adapter = describe_adapter(&ctx);
        Ok(Session {
            state: Rc::new(RefCell::new(State {
                ctx,
                engine: None,
                bench: None,
            })),
            cancel: Rc::new(Cell::new(false)),
            adapter,
        })
    }

    /// The adapter, the device's limits and features (JSON).
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// Asks the running solve, bench or pipeline check to stop at its next
    /// check; it then rejects with `cancelled` (what it reported so far
    /// stands). A no-op when nothing runs.
    pub fn cancel(&self) {
        if self.state.try_borrow_mut().is_err() {
            self.cancel.set(true);
        }
    }

    /// The most ACT steps [`Session::solve`] runs.
    pub fn max_act_steps() -> u32 {
        MAX_ACT_STEPS
    }

    /// Loads a model from the bytes of its safetensors file (`name` for
    /// messages), uploads it and compiles its kernels; resolves to its
    /// configuration and size (JSON). A file that is not a model rejects
    /// with the reason and keeps the model loaded before.
    pub fn load_model(&self, bytes: Vec<u8>, name: String) -> Promise {
        let state = Rc::clone(&self.state);
        future_to_promise(async move {
            let mut state = take(&state)?;
            let refuse = |message: &str| js_message(&named(&name, message));
            if has_embedded_config(&bytes) == Some(false) {
                // the loader would ask for a configuration, which the page
                // cannot take
                return Err(refuse(
                    "this safetensors file carries no model configuration (the `config` entry of \
                     its header metadata), so it is not a model file in trm-wgpu's format; \
                     `trm convert` writes one from a checkpoint and its configuration \
                     (README, \"Converting a checkpoint\")",
                ));
            }
            let model =
                TrmModel::from_safetensors_bytes(&bytes, &name, &LoadOptions::default(), None)
                    .map_err(|e| refuse(&e.to_string()))?;
            let config = model.config().clone();
            let parameters = model.parameter_count();
            let engine =
                GpuEngine::new(&state.ctx, Arc::new(model)).map_err(|e| refuse(&e.to_string()))?;
            state
                .ctx
                .flush_errors()
                .await
                .map_err(|e| refuse(&e.to_string()))?;
            state.engine = Some(engine);
            let info = json!({
                "name": name,
                "parameters": parameters,
                "config": serde_json::from_str::<Value>(&config.to_json()).unwrap_or(Value::Null),
                "sudoku": is_sudoku(&config),
            });
            Ok(JsValue::from_str(&info.to_string()))
        })
    }

    /// Solves the puzzles of `text` (81 characters a line, `.` or `0` for
    /// blanks) with the loaded model through the solve program (a
    /// `Stream`), one ACT step at a time for at most `act_steps` steps (1
    /// to [`MAX_ACT_STEPS`]), with `early_halt` each puzzle stopping after
    /// the first step where it halts by the model's rule (TRM: q_halt > 0;
    /// the CLI's `--halt`), calling `on_step` with each step's `SolveStep`
    /// (JSON); resolves to all of them (a JSON array).
    pub fn solve(
        &self,
        text: String,
        act_steps: u32,
        early_halt: bool,
        on_step: Function,
    ) -> Promise {
        let state = Rc::clone(&self.state);
        let cancel = Rc::clone(&self.cancel);
        future_to_promise(async move {
            let mut state = take(&state)?;
            cancel.set(false);
            if !(1..=MAX_ACT_STEPS).contains(&act_steps) {
                return Err(js_message(&format!(
                    "ACT steps: give a whole number from 1 to {MAX_ACT_STEPS}, not {act_steps}"
                )));
            }
            let engine = state
                .engine
                .as_mut()
                .ok_or_else(|| js_message("no model is loaded"))?;
            let config = engine.config().clone();
            if !is_sudoku(&config) {
                return Err(js_message(
                    "the loaded model is not a 9 x 9 Sudoku model (seq_len 81, vocab 11); load one to solve",
                ));
            }
            let puzzles = Grid::parse_many(&text).map_err(js_error)?;
            if puzzles.is_empty() {
                return Err(js_message(
                    "no puzzle given: 81 characters a line, . or 0 for blanks",
                ));
            }
            let seq = config.seq_len;
            let start = Instant::now();
            // the solve program, one ACT step at a time, every puzzle in
            // flight looked at after each; halting is the program's
            let options = SolveOptions::default()
                .act_steps(act_steps as usize)
                .early_halt(early_halt)
                .carry(false);
            let mut stream = Stream::new(engine, puzzles.len(), &options)
                .map_err(js_error)?
                .every_step();
            for puzzle in &puzzles {
                stream.submit(&puzzle.tokens(), 0).map_err(js_error)?;
            }
            let n = puzzles.len();
            let mut latest: Vec<Option<(Vec<u32>, f32)>> = vec![None; n];
            let mut halted: Vec<Option<usize>> = vec![None; n];
            let mut previous: Option<Vec<u32>> = None;
            let mut steps = Vec::new();
            let mut step = 0;
            while !stream.is_idle() {
                check_cancel(&cancel)?;
                step += 1;
                let finished = stream.step_async().await.map_err(js_error)?;
                for one in &finished {
                    // it left: by halting, or at its last allowed step
                    // (halted too where it would have)
                    let ticket = one.ticket as usize;
                    let (q_halt, q_continue) =
                        (one.output.q_halt_logits[0], one.output.q_continue_logits[0]);
                    if early_halt && config.halts(q_halt, q_continue) {
                        halted[ticket] = Some(one.output.steps[0] as usize);
                    }
                }
                let mut shown = finished;
                shown.extend(stream.peek_async().await.map_err(js_error)?);
                for one in shown {
                    let predicted = one.output.predictions();
                    latest[one.ticket as usize] = Some((predicted, one.output.q_halt_logits[0]));
                }
                let predicted: Vec<u32> = latest
                    .iter()
                    .flat_map(|l| l.as_ref().map_or(vec![0; seq], |(p, _)| p.clone()))
                    .collect();
                let grids: Vec<Grid> = predicted.chunks(seq).map(Grid::from_tokens).collect();
                let changed = match &previous {
                    Some(before) => before
                        .chunks(seq)
                        .zip(predicted.chunks(seq))
                        .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count())
                        .collect(),
                    None => vec![0; n],
                };
                let row = SolveStep {
                    step,
                    act_steps: act_steps as usize,
                    answers: grids.iter().map(Grid::to_line).collect(),
                    valid: grids
                        .iter()
                        .zip(&puzzles)
                        .map(|(g, p)| g.solves(p))
                        .collect(),
                    q_halt: latest
                        .iter()
                        .map(|l| l.as_ref().map_or(f32::NAN, |l| l.1))
                        .collect(),
                    halted: halted.clone(),
                    running: n - stream.stats().puzzles as usize,
                    tokens: predicted.clone(),
                    changed,
                    seconds: start.elapsed().as_secs_f64(),
                };
                report(&on_step, &row);
                steps.push(row);
                previous = Some(predicted);
            }
            let text = serde_json::to_string(&steps).map_err(|e| js_message(&e.to_string()))?;
            Ok(JsValue::from_str(&text))
        })
    }

    /// Times the recursion on the official Sudoku-Extreme shape (random
    /// weights, D = 512, S = 97, as `trm bench`) at each batch size of
    /// `batches`, about `seconds` each after a warm-up step, calling
    /// `on_row` with each `BenchRow` (JSON); resolves to all rows.
    /// Batch sizes beyond what one chunk of this device holds are skipped.
    pub fn bench(&self, batches: Vec<u32>, seconds: f64, on_row: Function) -> Promise {
        let state = Rc::clone(&self.state);
        let cancel = Rc::clone(&self.cancel);
        future_to_promise(async move {
            let mut state = take(&state)?;
            cancel.set(false);
            let state = &mut *state;
            if state.bench.is_none() {
                let model = TrmModel::random(TrmConfig::sudoku_extreme(), BENCH_SEED, 1.0)
                    .map_err(js_error)?;
                let engine = GpuEngine::new(&state.ctx, Arc::new(model)).map_err(js_error)?;
                state.ctx.flush_errors().await.map_err(js_error)?;
                state.bench = Some(engine);
            }
            let Some(engine) = state.bench.as_mut() else {
                return Err(js_message("the bench engine is missing"));
            };
            let config = engine.config().clone();
            let capacity = engine.chunk_capacity().map_err(js_error)?;
            let budget = seconds.max(0.01);
            let mut rows = Vec::new();
            let total = batches.len();
            for (i, &b) in batches.iter().enumerate() {
                let b = b.max(1) as usize;
                // progress: every size is reported, a skipped one too, so
                // the count reaches the total with the last
                let mut progress = json!({"done": i + 1, "total": total, "batch": b});
                if b > capacity {
                    progress["skipped"] = json!(format!(
                        "batch {b}: more than one chunk of this device holds ({capacity})"
                    ));
                    report(&on_row, &progress);
                    continue;
                }
                check_cancel(&cancel)?;
                let batch = random_batch(&config, b).map_err(js_error)?;
                // pipelines, the plan of this batch size
                engine
                    .time_recursion_steps_async(&batch, 1)
                    .await
                    .map_err(js_error)?;
                let (mut calls, mut wall, mut gpu) = (0u64, 0.0f64, Some(0.0f64));
                let mut k = 1;
                let started = Instant::now();
                while calls == 0 || started.elapsed().as_secs_f64() < budget {
                    check_cancel(&cancel)?;
                    let t = engine
                        .time_recursion_steps_async(&batch, k)
                        .await
                        .map_err(js_error)?;
                    calls += k as u64;
                    let w = t.wall.as_secs_f64();
                    wall += w;
                    gpu = gpu.zip(t.gpu).map(|(a, g)| a + g.as_secs_f64());
                    if w < budget / 8.0 {
                        k *= 2;
                    }
                }
                // a net call is one network call for one puzzle: `calls`
                // calls over b puzzles each
                let net_calls = calls * b as u64;
                let net_calls_per_second = net_calls as f64 / wall.max(1e-9);
                let row = BenchRow {
                    batch: b,
                    schedule: engine.last_stats().schedule.clone(),
                    net_calls,
                    wall_seconds: wall,
                    gpu_seconds: gpu.filter(|&g| g > 0.0),
                    net_calls_per_second,
                    gflop_per_net_call: config.flops_per_recursion_step() as f64 / 1e9,
                    gflops: net_calls_per_second * config.flops_per_recursion_step() as f64 / 1e9,
                };
                progress["row"] = serde_json::to_value(&row).unwrap_or(Value::Null);
                report(&on_row, &progress);
                rows.push(row);
            }
            let text = serde_json::to_string(&rows).map_err(|e| js_message(&e.to_string()))?;
            Ok(JsValue::from_str(&text))
        })
    }

    /// Builds every pipeline the engine has, on small random models of
    /// each kind (TRM-MLP with a puzzle embedding, TRM attention with RoPE
    /// and with learned positions, HRM), each on two devices: WebGPU's
    /// default limits (16 KiB of workgroup memory, 128 MiB bindings) and
    /// 16352 bytes (the 8-deep tiles, as on Apple GPUs). On the first it
    /// also checks each at f32 as `trm check` does: one ACT step through
    /// both schedules against the CPU engine (`fused_vs_cpu`,
    /// `spread_vs_cpu`: relative L2 of all outputs; null where only built;
    /// `passed`: both within `trm_wgpu::check::TOLERANCE`).
    /// Calls `on_case` per case; resolves to all (JSON).
    pub fn check_pipelines(&self, on_case: Function) -> Promise {
        let cancel = Rc::clone(&self.cancel);
        let state = Rc::clone(&self.state);
        future_to_promise(async move {
            // held as the other calls hold it: one call at a time, and
            // `cancel` knows one runs
            let _busy = take(&state)?;
            cancel.set(false);
            let mut cases = Vec::new();
            let total = pipeline_cases();
            for (device, options, solve) in [
                (
                    "WebGPU default limits",
                    GpuOptions::default()
                        .max_workgroup_memory(16384)
                        .max_buffer_bytes(128 << 20),
                    true,
                ),
                (
                    "16352 B workgroup memory",
                    GpuOptions::default().max_workgroup_memory(16352),
                    false,
                ),
            ] {
                let ctx = GpuContext::new_async(&options).await.map_err(js_error)?;
                // every model at f32; on the first device, the two step
                // kernels (MLP-mixer, attention) at each reduced precision,
                // whose weight preludes differ (built, not solved: the
                // native tests compare their numbers)
                let mut runs: Vec<(String, TrmConfig, Precision, bool)> = check_models()
                    .into_iter()
                    .map(|(label, config)| (label.to_string(), config, Precision::F32, solve))
                    .collect();
                if solve {
                    for precision in &Precision::ALL[1..] {
                        for (label, config) in check_models().into_iter().take(2) {
                            runs.push((format!("{label}, {precision}"), config, *precision, false));
                        }
                    }
                }
                for (label, config, precision, solve) in runs {
                    check_cancel(&cancel)?;
                    let case = check_case(&ctx, &label, config, precision, solve)
                        .await
                        .map_err(|e| js_message(&format!("{label} on {device}: {e}")))?;
                    // relative L2 from the CPU engine per schedule (null
                    // where only built) and the verdict
                    let vs_cpu = |i: usize| case.as_ref().map(|c| c[i].relative_l2);
                    let row = json!({
                        "done": cases.len() + 1,
                        "total": total,
                        "device": device,
                        "model": label,
                        "precision": precision.as_str(),
                        "pipelines": ctx.pipelines_compiled(),
                        "fused_vs_cpu": vs_cpu(0),
                        "spread_vs_cpu": vs_cpu(1),
                        "passed": case.as_ref().map(|c| c.iter().all(|l| l.passed)),
                        "errors": case.as_ref().map(|c| c.iter().filter_map(|l| l.error.clone()).collect::<Vec<_>>()),
                    });
                    report(&on_case, &row);
                    cases.push(row);
                }
            }
            Ok(JsValue::from_str(&Value::Array(cases).to_string()))
        })
    }
}

/// Whether `config` is a 9 x 9 Sudoku model, what the page's solver takes.
fn is_sudoku(config: &TrmConfig) -> bool {
    config.seq_len == 81 && config.vocab_size == 11
}

/// The cases of `Session::check_pipelines`: every model on each of the two
/// devices, and the two step kernels at each reduced precision on the
/// first.
fn pipeline_cases() -> usize {
    2 * check_models().len() + 2 * (Precision::ALL.len() - 1)
}

/// `batch` random puzzles (as `trm bench`'s).
fn random_batch(config: &TrmConfig, batch: usize) -> trm_wgpu::Result<PuzzleBatch> {
    let mut rng = SplitMix64::new(batch as u64);
    let tokens: Vec<i64> = (0..batch * config.seq_len)
        .map(|_| rng.below(config.vocab_size as u64) as i64)
        .collect();
    PuzzleBatch::new(config, &tokens, None)
}

/// The small random models of `Session::check_pipelines`: one of each
/// kind of kernel the engine specialises.
fn check_models() -> Vec<(&'static str, TrmConfig)> {
    let config = |extra: Value| {
        let mut base = json!({
            "seq_len": 13,
            "vocab_size": 7,
            "num_puzzle_identifiers": 3,
            "hidden_size": 40,
            "expansion": 2.5,
            "num_heads": 2,
            "H_cycles": 2,
            "L_cycles": 2,
            "L_layers": 2,
            "halt_max_steps": 2,
            "mlp_t": true,
            "pos_encodings": "none",
            "puzzle_emb_ndim": 40,
        });
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        TrmConfig::from_json(&base.to_string())
    };
    [
        ("TRM-MLP", json!({})),
        (
            "TRM attention, RoPE",
            json!({"mlp_t": false, "pos_encodings": "rope"}),
        ),
        (
            "TRM attention, learned positions",
            json!({"mlp_t": false, "pos_encodings": "learned", "puzzle_emb_ndim": 0}),
        ),
        (
            "HRM attention, RoPE",
            json!({"arch": "hrm", "mlp_t": false, "pos_encodings": "rope", "H_layers": 1}),
        ),
    ]
    .into_iter()
    .filter_map(|(label, extra)| config(extra).ok().map(|c| (label, c)))
    .collect()
}

/// Builds every pipeline of a random model of `config` on `ctx`, then,
/// when `solve`, checks it as `trm check` does (`trm_wgpu::check`): one ACT
/// step through each schedule against the CPU engine (compiled to wasm
/// beside it), the relative L2 difference of all outputs per schedule.
async fn check_case(
    ctx: &GpuContext,
    label: &str,
    config: TrmConfig,
    precision: Precision,
    solve: bool,
) -> trm_wgpu::Result<Option<[check::CheckLine; 2]>> {
    let model = TrmModel::random(config, 0x5eed ^ label.len() as u64, 0.5)?;
    let model = Arc::new(model.to_precision(precision)?);
    let mut engine = GpuEngine::new(ctx, model.clone())?;
    engine.prepare_pipelines()?;
    ctx.flush_errors().await?;
    if !solve {
        return Ok(None);
    }
    let model = check::CheckModel {
        label: label.to_string(),
        model,
    };
    let (batch, reference) = check::cpu_reference(&model)?;
    let run = GpuRunOptions::default();
    let mut lines = Vec::new();
    for schedule in [GpuSchedule::Fused, GpuSchedule::Spread] {
        let line =
            check::check_schedule_async(ctx, &model, &batch, &reference, schedule, &run).await;
        ctx.flush_errors().await?;
        lines.push(line);
    }
    let [fused, spread]: [check::CheckLine; 2] = lines
        .try_into()
        .map_err(|_| TrmError::Gpu("two schedules, two lines".into()))?;
    Ok(Some([fused, spread]))
}
