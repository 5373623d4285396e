//! Which engine runs a solve: the CPU reference, the GPU on a chosen API,
//! or the GPU when one exists.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::batch::PuzzleBatch;
use crate::config::TrmConfig;
use crate::cpu::{ActivationPrecision, CpuEngine, CpuOptions};
use crate::error::{Result, TrmError};
use crate::gpu::{GpuBackend, GpuContext, GpuEngine, GpuOptions, GpuRunOptions, GpuSchedule};
use crate::model::TrmModel;
use crate::program::{ActReport, ActRun, Fill, SlotEngine};
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};
use crate::weights::Precision;

/// The engine choice of `trm run --backend` (and of applications that offer
/// the same choice).
///
/// ```
/// use trm_wgpu::{Backend, gpu::GpuBackend};
/// assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
/// assert_eq!("vulkan".parse::<Backend>().unwrap(), Backend::Gpu(GpuBackend::Vulkan));
/// assert_eq!("gpu".parse::<Backend>().unwrap(), Backend::Gpu(GpuBackend::Any));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The CPU reference engine.
    #[default]
    Cpu,
    /// The GPU engine when an adapter exists and can run the model, else
    /// the CPU engine.
    Auto,
    /// The GPU engine on the given API (or any).
    Gpu(GpuBackend),
}

impl Backend {
    /// The spelling [`Backend::from_str`] accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Auto => "auto",
            Backend::Gpu(gpu) => gpu.as_str(),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = TrmError;
    /// `cpu`, `auto`, `gpu`, or a GPU API: `vulkan`, `metal`, `dx12`, `gl`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Backend::Cpu),
            "auto" => Ok(Backend::Auto),
            other => other.parse().map(Backend::Gpu).map_err(|_| {
                TrmError::BackendUnavailable(format!(
                    "unknown backend `{s}`: use one of cpu, gpu, auto, vulkan, metal, dx12, gl"
                ))
            }),
        }
    }
}

/// How [`Backend::build`] makes its engine.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EngineOptions {
    /// GPU adapter: the first whose name contains this, case-insensitive
    /// (default: `WGPU_ADAPTER_NAME`, else the preferred adapter).
    pub adapter: Option<String>,
    /// CPU worker threads (default: all cores).
    pub threads: Option<usize>,
    /// GPU schedule (default `auto`).
    pub schedule: GpuSchedule,
    /// Weight precision of the engine's network (default: the model's; a
    /// different one converts a copy, see [`TrmModel::to_precision`]).
    pub precision: Option<Precision>,
    /// What the CPU engine's products multiply the weights with (see
    /// [`ActivationPrecision`]).
    pub activations: ActivationPrecision,
}

impl EngineOptions {
    /// Sets [`EngineOptions::adapter`].
    pub fn adapter(mut self, name: impl Into<String>) -> Self {
        self.adapter = Some(name.into());
        self
    }

    /// Sets [`EngineOptions::threads`].
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Sets [`EngineOptions::schedule`].
    pub fn schedule(mut self, schedule: GpuSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Sets [`EngineOptions::precision`].
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = Some(precision);
        self
    }

    /// Sets [`EngineOptions::activations`].
    pub fn activations(mut self, activations: ActivationPrecision) -> Self {
        self.activations = activations;
        self
    }
}

/// The engine a [`Backend`] chose: the CPU engine or the GPU engine, both
/// behind [`Engine`].
pub enum AnyEngine {
    /// The CPU reference engine; `gpu_unavailable` says why when `auto`
    /// fell back to it.
    Cpu {
        /// The engine.
        engine: Box<CpuEngine>,
        /// Why `auto` did not use a GPU.
        gpu_unavailable: Option<TrmError>,
    },
    /// The GPU engine.
    Gpu(Box<GpuEngine>),
}

impl AnyEngine {
    /// The GPU engine's counters of the last solve, or for the CPU the
    /// kernel family its products ran on and the recursion steps of `out`:
    /// one JSON object (`trm run --stats`).
    pub fn stats_json(&self, out: &SolveOutput) -> serde_json::Value {
        match self {
            AnyEngine::Gpu(e) => {
                let mut stats =
                    serde_json::to_value(e.last_stats()).unwrap_or_else(|_| serde_json::json!({}));
                if let Some(map) = stats.as_object_mut() {
                    let info = e.context().adapter_info();
                    map.insert("engine".into(), "gpu".into());
                    map.insert("adapter".into(), info.name.clone().into());
                    map.insert(
                        "api".into(),
                        format!("{:?}", info.backend).to_lowercase().into(),
                    );
                    // as the kernels measured them (a small read-back)
                    let lanes = e.lane_widths().map_or(serde_json::Value::Null, |l| {
                        serde_json::to_value(l).unwrap_or_default()
                    });
                    map.insert("lanes".into(), lanes);
                }
                stats
            }
            AnyEngine::Cpu { engine, .. } => {
                let act_steps = out.steps.iter().copied().max().unwrap_or(0) as u64;
                let per_act = engine.config().recursion_steps_per_act_step() as u64;
                serde_json::json!({
                    "engine": "cpu",
                    "kernel": engine.kernel_family(),
                    "recursion_steps": act_steps * per_act,
                    "act_steps": act_steps,
                    "puzzle_recursion_steps":
                        out.steps.iter().map(|&s| u64::from(s)).sum::<u64>() * per_act,
                })
            }
        }
    }

    /// Why `auto` fell back to the CPU, if it did.
    pub fn gpu_unavailable(&self) -> Option<&TrmError> {
        match self {
            AnyEngine::Cpu {
                gpu_unavailable, ..
            } => gpu_unavailable.as_ref(),
            AnyEngine::Gpu(_) => None,
        }
    }

    fn inner(&self) -> &dyn Engine {
        match self {
            AnyEngine::Cpu { engine, .. } => engine.as_ref(),
            AnyEngine::Gpu(e) => e.as_ref(),
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Engine {
        match self {
            AnyEngine::Cpu { engine, .. } => engine.as_mut(),
            AnyEngine::Gpu(e) => e.as_mut(),
        }
    }
}

impl SlotEngine for AnyEngine {
    fn open_slots(&mut self, slots: usize) -> Result<usize> {
        match self {
            AnyEngine::Cpu { engine, .. } => engine.open_slots(slots),
            AnyEngine::Gpu(e) => e.open_slots(slots),
        }
    }

    fn fill_slots(&mut self, fills: &[Fill<'_>]) -> Result<()> {
        match self {
            AnyEngine::Cpu { engine, .. } => engine.fill_slots(fills),
            AnyEngine::Gpu(e) => e.fill_slots(fills),
        }
    }

    fn move_slot(&mut self, from: usize, to: usize) -> Result<()> {
        match self {
            AnyEngine::Cpu { engine, .. } => engine.move_slot(from, to),
            AnyEngine::Gpu(e) => e.move_slot(from, to),
        }
    }

    async fn act_steps(&mut self, occupied: usize, run: ActRun) -> Result<ActReport> {
        match self {
            AnyEngine::Cpu { engine, .. } => engine.act_steps(occupied, run).await,
            AnyEngine::Gpu(e) => e.act_steps(occupied, run).await,
        }
    }

    async fn read_slots(&mut self, slots: &[usize], carry: bool) -> Result<SolveOutput> {
        match self {
            AnyEngine::Cpu { engine, .. } => engine.read_slots(slots, carry).await,
            AnyEngine::Gpu(e) => e.read_slots(slots, carry).await,
        }
    }

    fn add_noise(
        &mut self,
        slot: usize,
        state: crate::noise::State,
        draw: &crate::noise::NoiseDraw,
    ) -> Result<()> {
        match self {
            AnyEngine::Cpu { engine, .. } => engine.add_noise(slot, state, draw),
            AnyEngine::Gpu(e) => e.add_noise(slot, state, draw),
        }
    }
}

impl Engine for AnyEngine {
    fn config(&self) -> &TrmConfig {
        self.inner().config()
    }

    fn describe(&self) -> String {
        self.inner().describe()
    }

    fn solve_from(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        self.inner_mut().solve_from(batch, carry, options)
    }
}

impl Backend {
    /// Makes the engine this choice names. `gpu` and `auto` honour
    /// `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`; `auto`
    /// falls back to the CPU when no adapter can run the model (the reason
    /// is kept in [`AnyEngine::gpu_unavailable`]).
    pub fn build(self, model: Arc<TrmModel>, options: &EngineOptions) -> Result<AnyEngine> {
        let model = match options.precision {
            Some(p) if p != model.precision() => Arc::new(model.to_precision(p)?),
            _ => model,
        };
        let cpu = |model, gpu_unavailable| -> Result<AnyEngine> {
            let mut cpu_options = CpuOptions::default()
                .activations(options.activations)
                .with_env()?;
            cpu_options.threads = options.threads;
            let engine = CpuEngine::with_options(model, cpu_options)?;
            Ok(AnyEngine::Cpu {
                engine: Box::new(engine),
                gpu_unavailable,
            })
        };
        let gpu = |model, api: GpuBackend| -> Result<AnyEngine> {
            let mut gpu_options = GpuOptions::default().backend(api).with_env()?;
            if let Some(name) = &options.adapter {
                gpu_options = gpu_options.adapter_name(name.clone());
            }
            let context = GpuContext::new(&gpu_options)?;
            // TRM_POISON_GPU=1: NaN-filled buffers, for tests through the CLI
            let run = GpuRunOptions::default()
                .schedule(options.schedule)
                .with_env();
            let engine = GpuEngine::new(&context, model)?.with_run_options(run);
            Ok(AnyEngine::Gpu(Box::new(engine)))
        };
        match self {
            Backend::Cpu => cpu(model, None),
            Backend::Gpu(api) => gpu(model, api),
            Backend::Auto => match gpu(Arc::clone(&model), GpuBackend::Any) {
                Ok(engine) => Ok(engine),
                Err(
                    e @ (TrmError::NoAdapter(_)
                    | TrmError::AdapterUnsuitable { .. }
                    | TrmError::RequestDevice { .. }
                    | TrmError::BackendUnavailable(_)),
                ) => cpu(model, Some(e)),
                Err(e) => Err(e),
            },
        }
    }
}
