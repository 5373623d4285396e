//! Is the GPU engine right on this adapter? The check `trm check` runs,
//! `trm bench` runs first, and the web page's "Build and check" runs:
//! one ACT step of models of every variant the engine has, through every
//! schedule and weight precision, compared with the CPU engine.
//!
//! The engine is tested on lavapipe (two Mesa versions) and llvmpipe's GL;
//! users run it on GPUs and drivers no test here reaches. Drivers differ in
//! what WGSL and Vulkan leave open (Mesa 22.3 silently cut long loops
//! short: `src/gpu/budget.rs`), so a user's machine checks its own driver:
//! a kernel variant whose outputs differ from the CPU engine's by more than
//! [`TOLERANCE`] (relative L2) fails, and the report says what to send.
//!
//! Each model's GPU and CPU engines read the same weights (at the model's
//! precision, widened the same way), so they agree to float rounding: about
//! 1e-7 relative L2 on lavapipe, a driver that computes wrong about 1.

use std::sync::Arc;

use serde::Serialize;

use crate::batch::PuzzleBatch;
use crate::config::{Arch, PosEncodings, TrmConfig};
use crate::cpu::CpuEngine;
use crate::error::Result;
use crate::gpu::{GpuContext, GpuEngine, GpuRunOptions, GpuSchedule};
use crate::model::TrmModel;
use crate::rng::SplitMix64;
use crate::solve::{Engine, SolveOptions, SolveOutput};
use crate::weights::Precision;

/// The largest relative L2 difference from the CPU engine a kernel variant
/// passes with (over one ACT step; rounding alone gives about 1e-7).
pub const TOLERANCE: f64 = 1e-4;

/// Puzzles of a check's batch: two, so that a kernel's workgroups see more
/// than one puzzle.
const PUZZLES: usize = 2;

/// A model the check runs, with what it stands for.
#[derive(Clone)]
pub struct CheckModel {
    /// What it is (variant and shape).
    pub label: String,
    /// The model, at the precision the check runs it.
    pub model: Arc<TrmModel>,
}

/// The outcome for one kernel variant: a model at a precision through one
/// schedule.
#[derive(Clone, Debug, Serialize)]
pub struct CheckLine {
    /// The model's label.
    pub model: String,
    /// `fused` or `spread`.
    pub schedule: String,
    /// The weights' precision.
    pub precision: String,
    /// Relative L2 difference of all outputs (logits, q logits, z_H, z_L)
    /// from the CPU engine's; infinite where an output is not finite.
    pub relative_l2: f64,
    /// The largest difference of one element, and which: `logits[i]` etc.
    pub max_error: f64,
    /// The element of `max_error`.
    pub worst: String,
    /// Whether it passed: `relative_l2` at most [`TOLERANCE`] and no error.
    pub passed: bool,
    /// Why the variant could not run, where it could not.
    pub error: Option<String>,
}

impl CheckLine {
    /// One line for a terminal: the variant, its error and the verdict.
    pub fn describe(&self) -> String {
        let verdict = if self.passed { "ok" } else { "FAILED" };
        match &self.error {
            Some(e) => format!(
                "{:<44} {:<6} {:<5} {verdict}: {e}",
                self.model, self.schedule, self.precision
            ),
            None => format!(
                "{:<44} {:<6} {:<5} relative L2 {:.1e}, max {:.1e} at {:<16} {verdict}",
                self.model,
                self.schedule,
                self.precision,
                self.relative_l2,
                self.max_error,
                self.worst
            ),
        }
    }
}

/// Random models of every variant the engine has, each kernel kind
/// specialised once: the MLP-mixer with a puzzle embedding, attention with
/// RoPE, with learned positions and with none, HRM; at small odd shapes
/// (one ACT step of two recursions), and, with `official_shapes`, at the
/// official Sudoku shape (S 97, D 512) in both variants, one recursion of
/// each network: there a fused call runs as several segments, which a
/// driver that cuts long loops short gets wrong. All at f32.
pub fn variant_models(official_shapes: bool) -> Result<Vec<CheckModel>> {
    let small = |extra: &str| {
        TrmConfig::from_json(&format!(
            r#"{{"seq_len": 13, "vocab_size": 7, "num_puzzle_identifiers": 3,
                "hidden_size": 40, "expansion": 2.5, "num_heads": 2, "H_cycles": 1,
                "L_cycles": 2, "L_layers": 2, "halt_max_steps": 1,
                "puzzle_emb_ndim": 40, {extra}}}"#
        ))
    };
    let mut configs = vec![
        (
            "MLP-mixer, S 17, D 40",
            small(r#""mlp_t": true, "pos_encodings": "none""#)?,
        ),
        (
            "attention RoPE, S 17, D 40",
            small(r#""mlp_t": false, "pos_encodings": "rope""#)?,
        ),
        (
            "attention learned, S 17, D 40",
            small(r#""mlp_t": false, "pos_encodings": "learned""#)?,
        ),
        (
            "attention, no positions, S 17, D 40",
            small(r#""mlp_t": false, "pos_encodings": "none""#)?,
        ),
        (
            "HRM attention RoPE, S 17, D 40",
            small(r#""arch": "hrm", "mlp_t": false, "pos_encodings": "rope", "H_layers": 1"#)?,
        ),
    ];
    if official_shapes {
        for (label, mlp_t) in [
            ("MLP-mixer, Sudoku shape S 97, D 512", true),
            ("attention RoPE, Sudoku shape S 97, D 512", false),
        ] {
            let config = TrmConfig {
                h_cycles: 1,
                l_cycles: 1,
                halt_max_steps: 1,
                mlp_t,
                pos_encodings: if mlp_t {
                    PosEncodings::None
                } else {
                    PosEncodings::Rope
                },
                num_puzzle_identifiers: 3,
                ..TrmConfig::sudoku_extreme()
            };
            config.validate()?;
            configs.push((label, config));
        }
    }
    configs
        .into_iter()
        .enumerate()
        .map(|(i, (label, config))| {
            debug_assert!(config.arch == Arch::Hrm || config.h_layers == 0);
            let model = TrmModel::random(config, 0xc4ec_0000 + i as u64, 0.5)?;
            Ok(CheckModel {
                label: label.to_string(),
                model: Arc::new(model),
            })
        })
        .collect()
}

/// `models` at each of `precisions` (converted copies; labels unchanged).
pub fn at_precisions(models: &[CheckModel], precisions: &[Precision]) -> Result<Vec<CheckModel>> {
    let mut out = Vec::new();
    for precision in precisions {
        for m in models {
            out.push(CheckModel {
                label: m.label.clone(),
                model: Arc::new(m.model.to_precision(*precision)?),
            });
        }
    }
    Ok(out)
}

/// A batch of [`PUZZLES`] random puzzles of `config` (a fixed seed).
fn random_batch(config: &TrmConfig) -> Result<PuzzleBatch> {
    let mut rng = SplitMix64::new(0xba7c4);
    let tokens: Vec<i64> = (0..PUZZLES * config.seq_len)
        .map(|_| rng.below(config.vocab_size as u64) as i64)
        .collect();
    let ids: Vec<i64> = (0..PUZZLES)
        .map(|_| rng.below(config.num_puzzle_identifiers.max(1) as u64) as i64)
        .collect();
    PuzzleBatch::new(config, &tokens, Some(&ids))
}

/// The CPU engine's one ACT step of `model` on its check batch: what every
/// GPU schedule is compared with.
pub fn cpu_reference(model: &CheckModel) -> Result<(PuzzleBatch, SolveOutput)> {
    let batch = random_batch(model.model.config())?;
    let mut cpu = CpuEngine::new(Arc::clone(&model.model))?;
    let out = cpu.solve(&batch, &SolveOptions::default().act_steps(1))?;
    Ok((batch, out))
}

/// Solves `batch` (one ACT step) through `schedule` on `ctx` and compares
/// it with `reference`: one line. `run` are the run options the engine
/// takes besides the schedule (a loop budget, poisoning).
pub async fn check_schedule_async(
    ctx: &GpuContext,
    model: &CheckModel,
    batch: &PuzzleBatch,
    reference: &SolveOutput,
    schedule: GpuSchedule,
    run: &GpuRunOptions,
) -> CheckLine {
    let mut line = CheckLine {
        model: model.label.clone(),
        schedule: schedule.as_str().to_string(),
        precision: model.model.precision().to_string(),
        relative_l2: f64::INFINITY,
        max_error: f64::INFINITY,
        worst: String::new(),
        passed: false,
        error: None,
    };
    let solved = async {
        let mut engine = GpuEngine::new(ctx, Arc::clone(&model.model))?
            .with_run_options(run.clone().schedule(schedule));
        engine
            .solve_async(batch, &SolveOptions::default().act_steps(1))
            .await
    }
    .await;
    match solved {
        Ok(out) => {
            let d = difference(&out, reference);
            line.relative_l2 = d.relative_l2;
            line.max_error = d.max_error;
            line.worst = d.worst;
            line.passed = d.relative_l2 <= TOLERANCE;
        }
        Err(e) => line.error = Some(e.to_string()),
    }
    line
}

/// [`check_schedule_async`], blocking (natively).
#[cfg(not(target_arch = "wasm32"))]
pub fn check_schedule(
    ctx: &GpuContext,
    model: &CheckModel,
    batch: &PuzzleBatch,
    reference: &SolveOutput,
    schedule: GpuSchedule,
    run: &GpuRunOptions,
) -> CheckLine {
    pollster::block_on(check_schedule_async(
        ctx, model, batch, reference, schedule, run,
    ))
}

/// How far one output set is from another.
struct Difference {
    relative_l2: f64,
    max_error: f64,
    worst: String,
}

/// The difference of `got` from `want` over all their outputs, as one
/// vector: relative L2, and the worst element by name.
fn difference(got: &SolveOutput, want: &SolveOutput) -> Difference {
    let pairs: [(&str, &[f32], &[f32]); 5] = [
        ("logits", &got.logits, &want.logits),
        ("q_halt", &got.q_halt_logits, &want.q_halt_logits),
        (
            "q_continue",
            &got.q_continue_logits,
            &want.q_continue_logits,
        ),
        ("z_H", &got.z_h, &want.z_h),
        ("z_L", &got.z_l, &want.z_l),
    ];
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut worst = Difference {
        relative_l2: 0.0,
        max_error: 0.0,
        worst: String::new(),
    };
    for (name, g, w) in pairs {
        if g.len() != w.len() {
            worst.worst = format!("{name} (length {} of {})", g.len(), w.len());
            worst.relative_l2 = f64::INFINITY;
            worst.max_error = f64::INFINITY;
            return worst;
        }
        for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
            let e = (f64::from(a) - f64::from(b)).abs();
            let e = if e.is_finite() { e } else { f64::INFINITY };
            num += e * e;
            den += f64::from(b) * f64::from(b);
            if e > worst.max_error || worst.worst.is_empty() {
                worst.max_error = e;
                worst.worst = format!("{name}[{i}]");
            }
        }
    }
    worst.relative_l2 = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variants_cover_every_kernel_kind() {
        let models = variant_models(true).unwrap();
        let has = |f: &dyn Fn(&TrmConfig) -> bool| models.iter().any(|m| f(m.model.config()));
        assert!(has(&|c| c.mlp_t));
        for pos in [
            PosEncodings::Rope,
            PosEncodings::Learned,
            PosEncodings::None,
        ] {
            assert!(has(&|c| !c.mlp_t && c.pos_encodings == pos), "{pos:?}");
        }
        assert!(has(&|c| c.arch == Arch::Hrm));
        assert!(has(&|c| c.mlp_t && c.hidden_size == 512));
        assert!(has(&|c| !c.mlp_t && c.hidden_size == 512));
    }

    #[test]
    fn a_difference_names_its_worst_element() {
        let config = &variant_models(false).unwrap()[0].model.config().clone();
        let mut a = SolveOutput::poisoned(config, 1);
        for v in [
            &mut a.logits,
            &mut a.q_halt_logits,
            &mut a.q_continue_logits,
            &mut a.z_h,
            &mut a.z_l,
        ] {
            v.iter_mut().for_each(|x| *x = 1.0);
        }
        let mut b = a.clone();
        assert_eq!(difference(&a, &b).relative_l2, 0.0);
        b.z_l[5] = 3.0;
        let d = difference(&b, &a);
        assert_eq!(d.worst, "z_L[5]");
        assert_eq!(d.max_error, 2.0);
        b.logits[0] = f32::NAN;
        assert_eq!(difference(&b, &a).relative_l2, f64::INFINITY);
    }
}
