//! GPU test helpers: one shared context per test binary, failing clearly
//! when no adapter exists (unless `TRM_SKIP_GPU=1`).

use std::sync::{Arc, OnceLock};

use trm_wgpu::{GpuContext, GpuEngine, GpuOptions, GpuRunOptions, GpuSchedule, TrmModel};

/// Whether `TRM_SKIP_GPU=1` asks to skip GPU tests on a machine without an
/// adapter.
pub fn skip_requested() -> bool {
    std::env::var("TRM_SKIP_GPU").is_ok_and(|v| v == "1")
}

/// The GPU context of this test binary (adapter from `WGPU_BACKEND` /
/// `WGPU_ADAPTER_NAME` when set). `None` only when there is no adapter and
/// `TRM_SKIP_GPU=1`; without that variable a missing adapter fails the test.
pub fn context() -> Option<GpuContext> {
    static CONTEXT: OnceLock<Result<GpuContext, String>> = OnceLock::new();
    let result = CONTEXT.get_or_init(|| {
        GpuOptions::default()
            .with_env()
            .and_then(|options| GpuContext::new(&options))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(context) => Some(context.clone()),
        Err(e) if skip_requested() => {
            eprintln!("skipping a GPU test (TRM_SKIP_GPU=1): {e}");
            None
        }
        Err(e) => panic!(
            "GPU tests need a GPU adapter, and there is none: {e}. On Linux without a GPU, install \
             Mesa's lavapipe (apt-get install mesa-vulkan-drivers); set TRM_SKIP_GPU=1 to skip GPU tests"
        ),
    }
}

/// A GPU engine for `model` that poisons its device buffers with NaN before
/// every solve, so that an element no kernel writes fails the comparison.
/// `None` as [`context`].
pub fn engine(model: &TrmModel) -> Option<GpuEngine> {
    Some(engine_on(&context()?, model))
}

/// A GPU engine for `model` on `context` that poisons its device buffers
/// with NaN before every solve, as [`engine`] on the shared context.
pub fn engine_on(context: &GpuContext, model: &TrmModel) -> GpuEngine {
    let engine = GpuEngine::new(context, Arc::new(model.clone()))
        .unwrap_or_else(|e| panic!("GPU engine on {}: {e}", context.describe()));
    engine.with_run_options(GpuRunOptions::default().poison(true))
}

/// A new context on the adapter of [`context`] (from the environment), with
/// `limit` applied to its options: a device smaller than the adapter, as a
/// test wants it.
pub fn limited_context(limit: impl FnOnce(GpuOptions) -> GpuOptions) -> GpuContext {
    let options = limit(GpuOptions::default().with_env().unwrap());
    GpuContext::new(&options).unwrap()
}

/// One poisoned engine per schedule (fused, then spread), for checks that
/// every schedule must pass. `None` as [`context`].
pub fn engines(model: &TrmModel) -> Option<Vec<(GpuSchedule, GpuEngine)>> {
    let context = context()?;
    Some(
        [GpuSchedule::Fused, GpuSchedule::Spread]
            .into_iter()
            .map(|schedule| (schedule, engine_on(&context, model).with_schedule(schedule)))
            .collect(),
    )
}
