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
/// `WGPU_ADAPTER_NAME` when set), its kernels filling their workgroup
/// memory with NaN before use ([`GpuOptions::poison_workgroup_memory`]).
/// `None` only when there is no adapter and `TRM_SKIP_GPU=1`; without that
/// variable a missing adapter fails the test.
pub fn context() -> Option<GpuContext> {
    static CONTEXT: OnceLock<Result<GpuContext, String>> = OnceLock::new();
    let result = CONTEXT.get_or_init(|| {
        GpuOptions::default()
            .poison_workgroup_memory()
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
    let options = limit(
        GpuOptions::default()
            .poison_workgroup_memory()
            .with_env()
            .unwrap(),
    );
    GpuContext::new(&options).unwrap()
}

/// The lane width the kernels must reach on `context` (`report_lanes` in
/// step_common.wgsl): 1 without subgroups; on lavapipe its SIMD width / 32,
/// which its adapter name states ("llvmpipe (LLVM 15.0.6, 256 bits)") and
/// `LP_NATIVE_VECTOR_WIDTH` sets (128, 256, 512: clusters of 4, 8, 16);
/// `None` on other adapters, whose subgroups the kernels measure.
pub fn expected_lanes(context: &GpuContext) -> Option<u32> {
    // (an adapter with just the 16 KiB the tiles take keeps them whole and
    // goes without the lane check's 8 bytes: src/gpu/step_common.rs)
    let exactly_the_tiles =
        (16384..16392).contains(&context.limits().max_compute_workgroup_storage_size);
    if !context.subgroups() || exactly_the_tiles {
        return Some(1);
    }
    let name = &context.adapter_info().name;
    let bits = name
        .strip_prefix("llvmpipe")?
        .split(|c: char| !c.is_ascii_digit())
        .rev()
        .find(|s| !s.is_empty())?;
    let bits: u32 = bits.parse().ok()?;
    Some((bits / 32).min(16))
}

/// Asserts that the kernels `engine`'s last solve ran reached the lane
/// width [`expected_lanes`] names (any width of at least 1 where it names
/// none), as they measured it.
pub fn assert_lanes(label: &str, engine: &GpuEngine) {
    let widths = engine.lane_widths().unwrap();
    let expected = expected_lanes(engine.context());
    let ran = [widths.fused, widths.spread_norm, widths.spread_attention];
    assert!(
        ran.iter().any(Option::is_some),
        "{label}: no kernel reported"
    );
    for width in ran.into_iter().flatten() {
        match expected {
            Some(want) => assert_eq!(
                width,
                want,
                "{label}: {widths:?} on {}",
                engine.context().describe()
            ),
            None => assert!(width >= 1, "{label}: {widths:?}"),
        }
    }
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
