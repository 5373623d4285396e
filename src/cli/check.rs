//! `trm check`: is the GPU engine right on this adapter? One ACT step of
//! models of every variant the engine has, every schedule and precision,
//! against the CPU engine (`trm_wgpu::check`), one line per kernel variant.

use std::path::PathBuf;
use std::sync::Arc;

use trm_wgpu::check::{self, CheckLine, CheckModel};
use trm_wgpu::gpu::{GpuBackend, loop_limit};
use trm_wgpu::{
    GpuContext, GpuOptions, GpuRunOptions, GpuSchedule, LoadOptions, Precision, Result, TrmError,
    TrmModel,
};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Also check this model (the project's format or an official step_N
    /// checkpoint), at its shape and precision.
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// The precision to run --model at (default: as stored).
    #[arg(long)]
    model_precision: Option<Precision>,
    /// GPU API: gpu (any), vulkan, metal, dx12, gl.
    #[arg(long, default_value = "gpu")]
    backend: GpuBackend,
    /// The first adapter whose name contains this (case-insensitive).
    #[arg(long)]
    adapter: Option<String>,
    /// Weight precisions of the random models (comma-separated; default
    /// all four: f32, f16, bf16, int8).
    #[arg(long, value_delimiter = ',')]
    precision: Vec<Precision>,
    /// Only the small random models, not the ones at the official Sudoku
    /// shape (D 512): seconds instead of a minute on a software adapter.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn check(args: CheckArgs) -> Result<()> {
    let mut options = GpuOptions::default().backend(args.backend).with_env()?;
    if let Some(name) = &args.adapter {
        options = options.adapter_name(name.clone());
    }
    let ctx = GpuContext::new(&options)?;
    // TRM_GPU_LOOP_BUDGET=none shows what a driver's loop limit does
    let run = GpuRunOptions::default().with_env();
    let precisions = if args.precision.is_empty() {
        Precision::ALL.to_vec()
    } else {
        args.precision.clone()
    };
    let mut models = check::at_precisions(&check::variant_models(!args.quick)?, &precisions)?;
    if let Some(path) = &args.model {
        let mut load = LoadOptions::default();
        load.precision = args.model_precision;
        let model = TrmModel::load_with(path, &load, None)?;
        models.push(CheckModel {
            label: format!("{}", path.display()),
            model: Arc::new(model),
        });
    }
    let limit = loop_limit(&ctx)?;
    if !args.json {
        println!("trm check on {}", ctx.describe());
        match limit {
            None => println!("loops: run to their end (probed to 2^20 iterations)"),
            Some(n) if run.max_loop_iterations < n => println!(
                "loops: this driver ends every loop of an invocation after {n} iterations; \
                 the engine keeps each dispatch within {}",
                run.max_loop_iterations
            ),
            Some(n) => println!(
                "loops: this driver ends every loop of an invocation after {n} iterations, \
                 and the loop budget ({}, TRM_GPU_LOOP_BUDGET) lets dispatches run longer",
                if run.max_loop_iterations == u64::MAX {
                    "none".to_string()
                } else {
                    run.max_loop_iterations.to_string()
                }
            ),
        }
    }
    let mut lines: Vec<CheckLine> = Vec::new();
    for model in &models {
        let (batch, reference) = check::cpu_reference(model)?;
        for schedule in [GpuSchedule::Fused, GpuSchedule::Spread] {
            let line = check::check_schedule(&ctx, model, &batch, &reference, schedule, &run);
            if !args.json {
                println!("{}", line.describe());
            }
            lines.push(line);
        }
    }
    let failed = lines.iter().filter(|l| !l.passed).count();
    if args.json {
        let info = ctx.adapter_info();
        let value = serde_json::json!({
            "adapter": info.name,
            "driver": info.driver,
            "driver_info": info.driver_info,
            "api": format!("{:?}", info.backend).to_lowercase(),
            "device_type": format!("{:?}", info.device_type),
            "loop_limit": limit,
            "max_loop_iterations": run.max_loop_iterations,
            "tolerance": check::TOLERANCE,
            "lines": lines,
            "failed": failed,
        });
        println!("{value}");
    } else {
        println!(
            "{} of {} kernel variants match the CPU engine (relative L2 at most {:.0e})",
            lines.len() - failed,
            lines.len(),
            check::TOLERANCE
        );
    }
    if failed > 0 {
        return Err(TrmError::Gpu(format!(
            "{failed} kernel variants differ from the CPU engine on {}: this adapter's driver \
             computes them wrong. Please report it to trm-wgpu's issue tracker with this \
             output (the adapter, its driver, the failing lines); meanwhile `--backend cpu` \
             is right, and a schedule whose lines all passed (`--schedule`) may be too",
            ctx.describe()
        )));
    }
    Ok(())
}
