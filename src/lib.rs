//! # trm-wgpu
//!
//! Inference for the Tiny Recursive Model (TRM, arXiv 2510.04871): a CPU
//! reference engine that reproduces the authors' PyTorch outputs, and a GPU
//! engine on wgpu with hand-written WGSL kernels.
//!
//! ```no_run
//! use std::sync::Arc;
//! use trm_wgpu::{CpuEngine, Engine, PuzzleBatch, SolveOptions, TrmModel};
//!
//! # fn main() -> trm_wgpu::Result<()> {
//! let model = Arc::new(TrmModel::load("model.safetensors")?);
//! let tokens = vec![1u32; model.config().seq_len]; // one puzzle of blanks
//! let batch = PuzzleBatch::new(model.config(), &tokens, None)?;
//! let mut engine = CpuEngine::new(model)?;
//! let out = engine.solve(&batch, &SolveOptions::default())?;
//! println!("answer: {:?}, q_halt: {}", out.predictions(), out.q_halt_logits[0]);
//! # Ok(())
//! # }
//! ```
//!
//! ## Cargo features
//!
//! - `cli` (default): the `trm` binary and the examples, with their
//!   command-line, progress and plotting crates (clap, indicatif,
//!   plotters); turns on `threads` and `official`.
//! - `threads`: faer's parallel matrix products in the CPU engine (the
//!   engine's own rayon pool is there without it).
//! - `official`: [`checkpoint::official`], the reader and converter of
//!   the authors' `torch.save` checkpoints (zip, pickle, `all_config.yaml`).
//!
//! Everything else, both engines, the project's checkpoint format, the
//! tasks and the ARC data set reader and evaluator ([`arc`]), is always
//! there. An application that only runs models takes
//! `trm-wgpu = { version = "0.1", default-features = false, features = ["threads"] }`
//! (the browser build, without `threads`). The tests and examples take
//! the default features.
// No unsafe code but read-only file mappings (`arc`), a `madvise` call (huge pages for the CPU engine's
// packed weights), a prefetch hint in its kernel (`cpu/panels.rs`) and one
// `set_var` while the process has a single thread
// (`GpuContext::quiet_device_select`), each allowed where it stands.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod arc;
pub mod augment;
pub mod backend;
pub mod batch;
mod blocking;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod model;
pub mod noise;
pub mod program;
pub mod rng;
pub mod run;
pub mod shard;
pub mod solve;
pub mod tasks;
mod tensor_file;
pub mod weights;

pub use backend::{AnyEngine, Backend, EngineOptions};
pub use batch::PuzzleBatch;
pub use config::{Arch, Level, PosEncodings, TrmConfig};
pub use cpu::{ActivationPrecision, CpuEngine, CpuOptions, Int8Kernel, KernelChoice};
pub use error::{Result, TrmError};
pub use gpu::{
    GpuBackend, GpuContext, GpuEngine, GpuOptions, GpuRunOptions, GpuSchedule, GpuStats,
};
pub use model::{LoadOptions, Tensor, TrmModel};
// streaming, where an embedder looks for it (the solve program's `Stream`)
pub use program::{Finished, SlotEngine, Stream, StreamStats, solve_streaming};
pub use solve::{ArrayData, Carry, Engine, NamedArray, SolveOptions, SolveOutput};
pub use weights::{Matrix, Precision};
/// The wgpu this crate is built on, for applications that bring their own
/// device ([`GpuContext::from_device`]).
pub use wgpu;

/// The README's code compiles (a doctest only).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The book's library chapter runs (a doctest only).
#[doc = include_str!("../docs/src/library.md")]
#[cfg(doctest)]
pub struct BookLibraryDoctests;

// Every engine can move to another thread and be shared by reference: an
// application's worker pool holds them (checked at compile time).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<CpuEngine>();
    send_sync::<GpuEngine>();
    send_sync::<AnyEngine>();
    send_sync::<GpuContext>();
    send_sync::<TrmModel>();
    send_sync::<PuzzleBatch>();
    send_sync::<SolveOutput>();
    send_sync::<arc::ArcDataset>();
    send_sync::<arc::ArcVoter>();
};
