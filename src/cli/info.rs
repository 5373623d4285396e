//! `trm info`: what a checkpoint is and what it costs.

use trm_wgpu::{Arch, Result};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn info(args: InfoArgs) -> Result<()> {
    let model = args.model.load()?;
    let c = model.config();
    let per_step = c.flops_per_recursion_step();
    let per_act = c.flops_per_act_step();
    let per_puzzle = c.flops_per_puzzle();
    let bytes = model.stored_bytes();
    if args.json {
        let value = serde_json::json!({
            "config": serde_json::from_str::<serde_json::Value>(&c.to_json()).unwrap_or_default(),
            "arch": c.arch.as_str(),
            "parameters": model.parameter_count(),
            "precision": model.precision().as_str(),
            "bytes": {
                "network": bytes.network,
                "embeddings": bytes.embeddings,
                "puzzle_table": bytes.puzzle_table,
            },
            "state_len": c.state_len(),
            "puzzle_emb_positions": c.puzzle_emb_positions(),
            "channel_inter": c.channel_inter(),
            "token_inter": if c.mlp_t { Some(c.token_inter()) } else { None },
            "recursion_steps_per_act_step": c.recursion_steps_per_act_step(),
            "recursion_steps_per_puzzle": c.recursion_steps_per_act_step() * c.halt_max_steps,
            "flops_per_recursion_step": per_step,
            "flops_per_act_step": per_act,
            "flops_per_puzzle": per_puzzle,
        });
        println!("{value}");
        return Ok(());
    }
    let variant = if c.mlp_t {
        "MLP-mixer (mlp_t)"
    } else {
        "attention"
    };
    println!("model           {}", args.model.model.display());
    let family = match c.arch {
        Arch::Trm => "TRM (Tiny Recursive Model): one network updates z_L and z_H",
        Arch::Hrm => "HRM (Hierarchical Reasoning Model): z_L by the L level, z_H by the H level",
    };
    println!("arch            {} = {family}", c.arch.as_str());
    println!(
        "variant         {variant}, pos_encodings {}",
        c.pos_encodings.as_str()
    );
    println!(
        "sizes           D = {}, S = {} (seq_len {} + {} puzzle positions), vocab {}, {} puzzle ids",
        c.hidden_size,
        c.state_len(),
        c.seq_len,
        c.puzzle_emb_positions(),
        c.vocab_size,
        c.num_puzzle_identifiers
    );
    if c.mlp_t {
        println!(
            "SwiGLU widths   channel {}, token {}",
            c.channel_inter(),
            c.token_inter()
        );
    } else {
        println!(
            "attention       {} heads of {}, SwiGLU width {}",
            c.num_heads,
            c.head_dim(),
            c.channel_inter()
        );
    }
    let layers = match c.arch {
        Arch::Trm => format!("L_layers {}", c.l_layers),
        Arch::Hrm => format!("L_layers {}, H_layers {}", c.l_layers, c.h_layers),
    };
    println!(
        "recursion       {layers}, n = L_cycles {}, T = H_cycles {}, N_sup = halt_max_steps {}",
        c.l_cycles, c.h_cycles, c.halt_max_steps
    );
    println!(
        "parameters      {} ({:.2}M)",
        model.parameter_count(),
        model.parameter_count() as f64 / 1e6
    );
    let table_precision = model
        .weights()
        .puzzle_emb
        .as_ref()
        .map_or(String::new(), |t| format!(" ({})", t.precision()));
    println!(
        "bytes           {} in all: network {} ({}), embeddings {}, puzzle table {}{table_precision}",
        bytes.network + bytes.embeddings + bytes.puzzle_table,
        bytes.network,
        model.precision(),
        bytes.embeddings,
        bytes.puzzle_table
    );
    println!(
        "cost per puzzle {:.3} GFLOP per net call, {} net calls per ACT step, {:.2} GFLOP per ACT step, {:.1} GFLOP for {} ACT steps",
        per_step as f64 / 1e9,
        c.recursion_steps_per_act_step(),
        per_act as f64 / 1e9,
        per_puzzle as f64 / 1e9,
        c.halt_max_steps
    );
    Ok(())
}
