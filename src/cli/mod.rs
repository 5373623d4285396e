//! Command-line interface of `trm`.

mod arc_eval;
mod bench;
mod check;
mod convert;
mod info;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use trm_wgpu::{LoadOptions, Precision, Result, TrmModel};

/// Tiny Recursive Model inference on CPU and GPU.
#[derive(Parser, Debug)]
#[command(name = "trm", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Solve a batch of puzzles and write the outputs.
    Run(run::RunArgs),
    /// Print a checkpoint's configuration, parameter count and cost.
    Info(info::InfoArgs),
    /// Measure recursion throughput of every available backend.
    Bench(bench::BenchArgs),
    /// Check the GPU engine against the CPU engine on this adapter: every
    /// model variant, schedule and precision, one line each.
    Check(check::CheckArgs),
    /// Convert an official `torch.save` checkpoint (step_N + all_config.yaml) to the project's format.
    Convert(convert::ConvertArgs),
    /// Evaluate on a built ARC data set as the authors do: answer every
    /// augmented test example (or take given predictions), vote, report
    /// pass@k and write the submission.
    ArcEval(arc_eval::ArcEvalArgs),
    /// Join the outputs of `trm run --shard K/N` (every share of one run,
    /// in any order) into the output the whole run writes.
    Merge(MergeArgs),
}

/// `trm merge`'s arguments.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shares' output files.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// The merged output.
    #[arg(long, short = 'o')]
    output: PathBuf,
}

/// `trm merge`: checks that the files are every share of one run, once,
/// and writes their outputs in the input's order.
fn merge(args: MergeArgs) -> Result<()> {
    let merged = trm_wgpu::shard::merge_outputs(&args.shards)?;
    merged.save(&args.output)?;
    eprintln!(
        "merged {} shards: {} puzzles into {}",
        args.shards.len(),
        merged.batch,
        args.output.display()
    );
    Ok(())
}

/// Model loading flags shared by the subcommands.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Checkpoint in the project's format (safetensors with the config in
    /// the header metadata).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Accept (and list) tensors the configuration does not use.
    #[arg(long)]
    pub allow_unexpected: bool,
    /// Run the network at this weight precision: f32, f16, bf16 or int8
    /// (default: as stored in the checkpoint).
    #[arg(long)]
    pub precision: Option<Precision>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<TrmModel> {
        let mut options = LoadOptions::default().allow_unexpected(self.allow_unexpected);
        options.precision = self.precision;
        let model = TrmModel::load_with(&self.model, &options, None)?;
        if !model.ignored_tensors().is_empty() {
            eprintln!(
                "warning: ignored tensors the configuration does not use: {}",
                model.ignored_tensors().join(", ")
            );
        }
        Ok(model)
    }
}

/// This process's peak resident memory (VmHWM), where the OS says it.
pub fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Info(args) => info::info(args),
        Command::Bench(args) => bench::bench(args),
        Command::Check(args) => check::check(args),
        Command::Convert(args) => convert::convert(args),
        Command::ArcEval(args) => arc_eval::arc_eval(args),
        Command::Merge(args) => merge(args),
    }
}
