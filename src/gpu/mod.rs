//! The GPU engine: TRM on wgpu with hand-written WGSL kernels, the whole
//! recursion resident on the device.
//!
//! A solve (the solve program, `crate::program`, over the engine's slots:
//! `slots.rs`) uploads the token ids and the initial carry, records one
//! embedding dispatch, then N_sup x T x (n + 1) network calls in one of two
//! schedules ([`GpuSchedule`]): `fused`, a workgroup per puzzle walking the
//! whole call (`shaders/mixer_step.wgsl` for the MLP-mixer model,
//! `shaders/attention_step.wgsl` for the attention model, both built on the
//! shared prelude `shaders/common/step_common.wgsl`) in as few dispatches as
//! the loop budget allows (`budget.rs`: some drivers cut long loops short),
//! cut into slices of puzzles so that no dispatch runs too long; or `spread`, each call's phases one
//! dispatch each over the whole batch's tiles (`shaders/spread_step.wgsl`,
//! planned by `spread.rs`), which fills a device at batch 1. Then the heads
//! after the last ACT step, and only the outputs the caller asks for are
//! read back. With early halting the device decides after each ACT step
//! (`shaders/halt.wgsl`: an index buffer maps workgroups to the puzzles
//! still running, and the fused steps and the heads dispatch indirectly
//! from its count), so the solve is still recorded ahead; the host reads
//! the running count one ACT step behind. Batches beyond the device's
//! buffer or dispatch limits run a chunk of the device at a time.
//!
//! Streaming (continuous batching) is the same program with fewer slots
//! than puzzles: a refill writes the new puzzle's ids and carry into its
//! slot's region and re-embeds on the device, and each ACT step's halting
//! comes back to the host so that a freed slot is refilled at once.
//!
//! The files, by job: `engine.rs` (the engine, its options and capacity,
//! the schedule a batch runs), `options.rs` (what callers set and read),
//! `chunk.rs` (the device buffers and their layout), `slots.rs` (the
//! driver: the solve program's operations), `record.rs` (commands into
//! dispatches, one pass a submission), `readback.rs` (mapping and decoding
//! what comes back), `timing.rs` (`trm bench`'s timed runs); the kernels,
//! each a Rust file beside its WGSL (`mixer_step`, `attention_step`,
//! `spread`, `embed`, `heads`, `halt`, `noise`, `probe`, on `step_common`
//! and `layout`), `kernels.rs` (every kernel's key), `budget.rs` (the loop
//! budget of a dispatch); `context` (the device) and `adapters.rs`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use trm_wgpu::gpu::{GpuContext, GpuEngine, GpuOptions};
//! use trm_wgpu::{Engine, PuzzleBatch, SolveOptions, TrmModel};
//!
//! # fn main() -> trm_wgpu::Result<()> {
//! let model = Arc::new(TrmModel::load("model.safetensors")?);
//! let context = GpuContext::new(&GpuOptions::default().with_env()?)?;
//! let mut engine = GpuEngine::new(&context, model.clone())?;
//! let tokens = vec![1i64; model.config().seq_len];
//! let batch = PuzzleBatch::new(model.config(), &tokens, None)?;
//! let out = engine.solve(&batch, &SolveOptions::default())?;
//! println!("{:?}, {}", out.predictions(), serde_json::to_string(engine.last_stats()).unwrap());
//! # Ok(())
//! # }
//! ```

mod adapters;
mod attention_step;
mod budget;
mod chunk;
mod context;
mod embed;
mod engine;
mod halt;
mod heads;
mod kernels;
mod layout;
mod mixer_step;
pub mod noise;
mod options;
mod probe;
mod readback;
mod record;
mod resident;
mod slots;
mod spread;
mod step_common;
mod timing;
#[cfg(test)]
mod translation_tests;

#[cfg(not(target_arch = "wasm32"))]
pub use adapters::list_adapters;
pub use adapters::{AdapterReport, list_adapters_async};
pub use context::{GpuBackend, GpuContext, GpuOptions};
pub use engine::GpuEngine;
pub use options::{GpuRunOptions, GpuSchedule, GpuStats, LaneWidths, WorkgroupSpread};
pub use probe::{LoopProbe, loop_limit, probe_loops};
pub use timing::RecursionTiming;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_serialise_with_the_documented_names() {
        let json = serde_json::to_value(GpuStats::default()).unwrap();
        for key in [
            "recursion_steps",
            "dispatches",
            "submits",
            "bytes_read_back",
            "lanes",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
