//! The state dict a configuration implies: the canonical (unprefixed)
//! name and shape of every tensor, in a stable order, and the prefixes
//! official checkpoints add to them. The configuration counts its
//! parameters from it; the model ([`crate::model`]) and the checkpoint
//! readers ([`crate::checkpoint`]) check tensors against it.

use super::{PosEncodings, TrmConfig};

/// Canonical names and shapes of every tensor the configuration requires, in
/// a stable order.
pub fn expected_tensors(config: &TrmConfig) -> Vec<(String, Vec<usize>)> {
    let d = config.hidden_size;
    let s = config.state_len();
    let mut out = vec![(
        "inner.embed_tokens.embedding_weight".to_string(),
        vec![config.vocab_size, d],
    )];
    if config.puzzle_emb_ndim > 0 {
        out.push((
            "inner.puzzle_emb.weights".into(),
            vec![config.num_puzzle_identifiers, config.puzzle_emb_ndim],
        ));
    }
    if config.pos_encodings == PosEncodings::Learned {
        out.push(("inner.embed_pos.embedding_weight".into(), vec![s, d]));
    }
    out.push(("inner.H_init".into(), vec![d]));
    out.push(("inner.L_init".into(), vec![d]));
    for p in layer_prefixes(config) {
        if config.mlp_t {
            let ti = config.token_inter();
            out.push((format!("{p}.mlp_t.gate_up_proj.weight"), vec![2 * ti, s]));
            out.push((format!("{p}.mlp_t.down_proj.weight"), vec![s, ti]));
        } else {
            out.push((format!("{p}.self_attn.qkv_proj.weight"), vec![3 * d, d]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, d]));
        }
        let ci = config.channel_inter();
        out.push((format!("{p}.mlp.gate_up_proj.weight"), vec![2 * ci, d]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![d, ci]));
    }
    out.push(("inner.lm_head.weight".into(), vec![config.vocab_size, d]));
    out.push(("inner.q_head.weight".into(), vec![2, d]));
    out.push(("inner.q_head.bias".into(), vec![2]));
    out
}

/// Name prefixes of the stored blocks, in
/// [`TrmWeights::layers`](crate::model::TrmWeights::layers) order:
/// `inner.L_level.layers.{i}`, then HRM's `inner.H_level.layers.{i}`.
pub(crate) fn layer_prefixes(config: &TrmConfig) -> impl Iterator<Item = String> {
    let l = (0..config.l_layers).map(|i| format!("inner.L_level.layers.{i}"));
    let h = (0..config.h_layers).map(|i| format!("inner.H_level.layers.{i}"));
    l.chain(h)
}

/// Strips the prefixes that official checkpoints carry (`_orig_mod.` from
/// torch.compile, `model.` from the loss wrapper).
pub fn canonical_name(name: &str) -> &str {
    let name = name.strip_prefix("_orig_mod.").unwrap_or(name);
    name.strip_prefix("model.").unwrap_or(name)
}

/// Whether a canonical name is the puzzle-embedding table.
pub(crate) fn is_puzzle_table(canonical: &str) -> bool {
    canonical == "inner.puzzle_emb.weights"
}

/// Whether a canonical name is one of the three f32 vectors (`H_init`,
/// `L_init`, `q_head.bias`), which every precision keeps as f32.
pub(crate) fn is_vector(canonical: &str) -> bool {
    matches!(
        canonical,
        "inner.H_init" | "inner.L_init" | "inner.q_head.bias"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stripped_in_order() {
        assert_eq!(
            canonical_name("_orig_mod.model.inner.H_init"),
            "inner.H_init"
        );
        assert_eq!(canonical_name("model.inner.H_init"), "inner.H_init");
        assert_eq!(canonical_name("inner.H_init"), "inner.H_init");
        // only the order torch.compile and the loss wrapper produce
        assert_eq!(
            canonical_name("model._orig_mod.inner.H_init"),
            "_orig_mod.inner.H_init"
        );
    }

    #[test]
    fn blocks_are_named_latent_level_first() {
        let config = TrmConfig {
            l_layers: 2,
            h_layers: 1,
            ..TrmConfig::sudoku_extreme()
        };
        let blocks: Vec<String> = expected_tensors(&config)
            .into_iter()
            .filter_map(|(name, _)| name.strip_suffix(".mlp.down_proj.weight").map(String::from))
            .collect();
        assert_eq!(
            blocks,
            [
                "inner.L_level.layers.0",
                "inner.L_level.layers.1",
                "inner.H_level.layers.0"
            ]
        );
        assert_eq!(layer_prefixes(&config).collect::<Vec<_>>(), blocks);
        assert!(is_vector("inner.q_head.bias") && !is_vector("inner.q_head.weight"));
        assert!(is_puzzle_table("inner.puzzle_emb.weights"));
    }
}
