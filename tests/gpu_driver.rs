//! What the engine relies on a driver for, checked on the adapter the tests
//! run on (CI runs this binary on Mesa 25's lavapipe and on Debian 12's Mesa
//! 22.3 lavapipe).
//!
//! Loops: Mesa 22.3's llvmpipe ends every loop of a shader invocation after
//! 65535 iterations in all (src/gpu/budget.rs); the engine keeps each
//! dispatch within a budget of 32768. `shaders/loop_probe.wgsl` is the
//! smallest case of that fault; here it must show either no limit or one
//! above the budget, and a loop within the budget must run right.

mod common;

use trm_wgpu::gpu::{loop_limit, probe_loops};
use trm_wgpu::{Engine, GpuSchedule, PosEncodings, SolveOptions, TrmConfig, TrmModel};

/// The engine's budget ([`trm_wgpu::GpuRunOptions::max_loop_iterations`]'s
/// default).
const BUDGET: u64 = 32_768;

#[test]
fn loops_within_the_budget_run_to_their_end() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    assert_eq!(
        trm_wgpu::GpuRunOptions::default().max_loop_iterations,
        BUDGET
    );
    // one loop and nested ones, just within the budget
    for (outer, inner) in [(1, BUDGET as u32), (128, 256)] {
        let probe = probe_loops(&ctx, outer, inner).unwrap();
        assert!(probe.complete(), "{}: {probe:?}", ctx.describe());
    }
}

#[test]
fn a_driver_loop_limit_is_found_and_lies_beyond_the_budget() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    let limit = loop_limit(&ctx).unwrap();
    eprintln!("{}: loop limit {limit:?}", ctx.describe());
    if let Some(ran) = limit {
        // Mesa 22.3: 65535 in one loop
        assert!(
            ran > 2 * BUDGET - 2,
            "{}: loops end after {ran}",
            ctx.describe()
        );
    }
    // where the driver cuts loops, the probe says so: a loop beyond the
    // limit is incomplete, one within it complete
    if let Some(ran) = limit {
        let beyond = probe_loops(&ctx, 1, ran as u32 + 1000).unwrap();
        assert!(!beyond.complete());
        assert_eq!(beyond.ran, ran);
    }
}

/// The kernels reach the lane width the adapter offers, as they measure it
/// (`report_lanes`): lavapipe's SIMD width / 32 (CI runs the GPU test
/// binaries at `LP_NATIVE_VECTOR_WIDTH` 128, 256 and 512: clusters of 4, 8
/// and 16), 1 without subgroups. Both variants, both schedules, so every
/// kernel with a reduction reports.
#[test]
fn kernels_reach_the_lane_width_of_the_adapter() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    eprintln!(
        "{}: expecting lanes {:?}",
        ctx.describe(),
        common::gpu::expected_lanes(&ctx)
    );
    for (mlp_t, pos) in [(true, PosEncodings::None), (false, PosEncodings::Rope)] {
        let config = TrmConfig::from_json(&format!(
            r#"{{"seq_len": 9, "vocab_size": 5, "hidden_size": 16, "expansion": 2,
                "num_heads": 2, "H_cycles": 1, "L_cycles": 1, "L_layers": 1,
                "halt_max_steps": 1, "mlp_t": {mlp_t}, "pos_encodings": "{}"}}"#,
            pos.as_str()
        ))
        .unwrap();
        let model = TrmModel::random(config.clone(), 7, 0.5).unwrap();
        let batch = common::gpu_checks::random_batch(&config, 2, 7);
        for schedule in [GpuSchedule::Fused, GpuSchedule::Spread] {
            let mut engine = common::gpu::engine_on(&ctx, &model).with_schedule(schedule);
            engine.solve(&batch, &SolveOptions::default()).unwrap();
            let widths = engine.lane_widths().unwrap();
            let label = format!("mlp_t {mlp_t}, {schedule}: {widths:?}");
            eprintln!("{label}");
            match schedule {
                GpuSchedule::Fused => assert!(widths.fused.is_some(), "{label}"),
                _ => {
                    assert!(widths.spread_norm.is_some(), "{label}");
                    assert_eq!(widths.spread_attention.is_some(), !mlp_t, "{label}");
                }
            }
            common::gpu::assert_lanes(&label, &engine);
        }
    }
}
