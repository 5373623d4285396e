//! `trm convert`: an official `torch.save` checkpoint to the project's
//! format, without Python.

use std::path::PathBuf;

use trm_wgpu::checkpoint::official::{self, ConvertOptions};
use trm_wgpu::{LoadOptions, Precision, Result, TrmModel};

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The authors' checkpoint: a `step_N` file written by `torch.save`; or,
    /// with --precision and no --config, a checkpoint in the project's
    /// format to rewrite at that precision.
    checkpoint: PathBuf,
    /// The `all_config.yaml` the authors' training wrote beside it (its
    /// `arch` section is the configuration).
    #[arg(long, short = 'c', required_unless_present = "precision")]
    config: Option<PathBuf>,
    /// The data set's `dataset.json` (seq_len, vocab_size,
    /// num_puzzle_identifiers); without it they are read from the tensor
    /// shapes where these determine them.
    #[arg(long, short = 'd')]
    dataset: Option<PathBuf>,
    /// Output: safetensors in the project's format (config in the header
    /// metadata), for `trm run` and `trm info`.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Tokens per puzzle (overrides dataset.json and the shapes).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Token ids (overrides dataset.json and the shapes).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Rows of the puzzle-embedding table (overrides dataset.json and the
    /// shapes).
    #[arg(long)]
    num_puzzle_identifiers: Option<usize>,
    /// Accept (and list) tensors the configuration does not use.
    #[arg(long)]
    allow_unexpected: bool,
    /// Write every matrix, the puzzle table too, at this precision: f32
    /// (default), f16, bf16 or int8 (I8 tensors with per-row F32 scales
    /// named `<tensor>_scale`).
    #[arg(long)]
    precision: Option<Precision>,
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    let load = LoadOptions::default().allow_unexpected(args.allow_unexpected);
    let Some(config) = &args.config else {
        // the project's format, rewritten at another precision
        let precision = args.precision.unwrap_or_default();
        let model = TrmModel::load_with(&args.checkpoint, &load, None)?;
        return write(&model.to_precision_all(precision)?, &args);
    };
    let mut options = ConvertOptions::default().load(load);
    options.seq_len = args.seq_len;
    options.vocab_size = args.vocab_size;
    options.num_puzzle_identifiers = args.num_puzzle_identifiers;
    let conversion =
        official::convert_with(&args.checkpoint, config, args.dataset.as_ref(), &options)?;
    for note in &conversion.inferred {
        eprintln!("inferred {note}");
    }
    if !conversion.ignored_fields.is_empty() {
        eprintln!(
            "warning: ignored unknown arch fields: {}",
            conversion.ignored_fields.join(", ")
        );
    }
    let model = &conversion.model;
    if !model.ignored_tensors().is_empty() {
        eprintln!(
            "warning: ignored tensors the configuration does not use: {}",
            model.ignored_tensors().join(", ")
        );
    }
    match args.precision {
        Some(precision) => write(&model.to_precision_all(precision)?, &args),
        None => write(model, &args),
    }
}

fn write(model: &TrmModel, args: &ConvertArgs) -> Result<()> {
    model.save(&args.output)?;
    let c = model.config();
    let bytes = model.stored_bytes();
    println!(
        "wrote {}: {}, {}, {} parameters ({} bytes: network {}, embeddings {}, puzzle table {}), D = {}, S = {} (seq_len {}), vocab {}, {} puzzle ids",
        args.output.display(),
        c.arch.as_str(),
        model.precision(),
        model.parameter_count(),
        bytes.network + bytes.embeddings + bytes.puzzle_table,
        bytes.network,
        bytes.embeddings,
        bytes.puzzle_table,
        c.hidden_size,
        c.state_len(),
        c.seq_len,
        c.vocab_size,
        c.num_puzzle_identifiers
    );
    Ok(())
}
