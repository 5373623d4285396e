//! How the CPU engine is asked to run: its activations' precision and
//! kernel family, its threads.

use super::kernels::{KERNEL_ENV, KernelChoice};
use crate::error::{Result, TrmError};

/// What the CPU engine's matrix products multiply the weights with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActivationPrecision {
    /// f32 activations against the weights widened to f32: the engine
    /// computes the network on the dequantized weights (within 1e-5
    /// relative L2 of float64 at every precision).
    #[default]
    F32,
    /// Activations at the weights' precision where a kernel gains from
    /// it (`kernels.rs` has the table). int8 weights: the channel SwiGLU's
    /// inputs quantized per token (symmetric, one scale per token and
    /// call) and integer products (AMX's `tdpbusd`, `vpdpbusd` with
    /// AVX-512 VNNI or AVX-VNNI); on AMX the token mixer's products too
    /// (`tdpbssd`, inputs quantized per column of the state, the axis they
    /// reduce along); attention, the heads, and the token mixer without
    /// AMX stay f32. bf16 weights on a CPU with AMX: every block product (the
    /// channel SwiGLU, the token mixer, attention's projections) on bf16
    /// tiles, each product's inputs rounded to bf16, f32 accumulation, f32
    /// everywhere else; without AMX they stay f32 (bf16 dot products,
    /// `vdpbf16ps`, measured less than half as fast as f32 FMA here), and
    /// so do f16 weights. The error bounds are stated in
    /// `tests/cpu_precision.rs`.
    Matched,
}

impl ActivationPrecision {
    /// `f32` or `matched`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationPrecision::F32 => "f32",
            ActivationPrecision::Matched => "matched",
        }
    }
}

impl std::fmt::Display for ActivationPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ActivationPrecision {
    type Err = TrmError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(ActivationPrecision::F32),
            "matched" => Ok(ActivationPrecision::Matched),
            _ => Err(TrmError::Input(format!(
                "unknown activations `{s}` (expected f32 or matched)"
            ))),
        }
    }
}

/// How [`CpuEngine::with_options`](super::CpuEngine::with_options) makes its engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuOptions {
    /// Worker threads (default: all cores, at most
    /// [`MAX_THREADS`](super::MAX_THREADS)).
    pub threads: Option<usize>,
    /// What the products multiply the weights with.
    pub activations: ActivationPrecision,
    /// Which instructions the matched-activation products may run on
    /// (default: the fastest the CPU has; forcing one the CPU lacks fails).
    pub kernels: KernelChoice,
    /// Bytes the engine may allocate beyond the model's weights: every
    /// thread's scratch, the RoPE tables and a solve's buffers, all sized
    /// by the configuration and checked before anything is allocated
    /// (default: [`PuzzleBatch::max_state_bytes`](crate::PuzzleBatch::max_state_bytes), 8 GiB).
    pub memory_limit: Option<u64>,
}

impl CpuOptions {
    /// Sets [`CpuOptions::threads`].
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Sets [`CpuOptions::activations`].
    pub fn activations(mut self, activations: ActivationPrecision) -> Self {
        self.activations = activations;
        self
    }

    /// Sets [`CpuOptions::kernels`].
    pub fn kernels(mut self, kernels: KernelChoice) -> Self {
        self.kernels = kernels;
        self
    }

    /// Sets [`CpuOptions::memory_limit`].
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Applies the environment: [`KERNEL_ENV`] (`TRM_CPU_KERNEL`: `auto`,
    /// `amx`, `avx512-vnni`, `avx-vnni`, `avx2`, `portable`) sets
    /// [`CpuOptions::kernels`] where it is still `auto`. Fails on a value
    /// it cannot read.
    pub fn with_env(mut self) -> Result<Self> {
        if self.kernels == KernelChoice::Auto
            && let Ok(value) = std::env::var(KERNEL_ENV)
            && !value.trim().is_empty()
        {
            self.kernels = value
                .parse()
                .map_err(|e| TrmError::Input(format!("{KERNEL_ENV}: {e}")))?;
        }
        Ok(self)
    }
}
