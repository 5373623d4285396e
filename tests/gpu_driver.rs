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
