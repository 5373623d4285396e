//! The model's own numbers, which every engine must compute alike: the
//! scales of the input embedding and of attention, and the RoPE tables.
//! Both engines take them from here, so a CPU and a GPU solve cannot drift
//! apart on them (the GPU engine bakes them into its kernels as override
//! constants and uploaded tables).

use std::f32::consts::FRAC_1_SQRT_2;

use crate::config::{PosEncodings, TrmConfig};

/// Scale of the learned position embedding, `x = scale * (x + pos)`: the
/// authors write 0.707106781, which rounds to the same f32 as 1/sqrt(2).
pub const LEARNED_POS_SCALE: f32 = FRAC_1_SQRT_2;

/// Scale of the whole input embedding, sqrt(hidden_size) in f32, as the
/// authors' `embed_scale` (applied after the positions).
pub fn embedding_scale(config: &TrmConfig) -> f32 {
    (config.hidden_size as f32).sqrt()
}

/// Scale of the attention scores, 1/sqrt(head_dim) rounded to f32 (the
/// engines apply it inside the softmax).
pub fn attention_scale(head_dim: usize) -> f32 {
    1.0 / (head_dim as f32).sqrt()
}

/// What the tables of [`rope_tables`] for `config` hold, and their bytes
/// (0 unless it is a RoPE attention model): both engines build them on the
/// host, and check this against their memory limit first.
pub(crate) fn rope_tables_memory(config: &TrmConfig) -> (String, u64) {
    let rope = !config.mlp_t && config.pos_encodings == PosEncodings::Rope;
    let (s, head_dim) = (config.state_len() as u64, config.head_dim() as u64);
    let floats = if rope { 2 * s * head_dim } else { 0 };
    (
        format!("RoPE tables (2 x S x head_dim floats, S = {s}, head_dim = {head_dim})"),
        4 * floats,
    )
}

/// RoPE tables `cos`, `sin`, each `[positions, head_dim]`, computed as the
/// authors' `RotaryEmbedding` does in float32: `inv_freq` rounded to f32,
/// the angle `s * inv_freq` rounded to f32, then its cosine and sine.
pub fn rope_tables(positions: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|j| {
            let exponent = ((2 * j) as f32 / head_dim as f32) as f64;
            (1.0 / (theta as f32 as f64).powf(exponent)) as f32
        })
        .collect();
    let mut cos = Vec::with_capacity(positions * head_dim);
    let mut sin = Vec::with_capacity(positions * head_dim);
    for s in 0..positions {
        // emb = concat(freqs, freqs)
        for _half in 0..2 {
            for &f in &inv_freq {
                let angle = (s as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_position_scale_is_the_authors_constant_in_f32() {
        // the literal as the authors write it, read as an f32
        let authors: f32 = "0.707106781".parse().unwrap();
        assert_eq!(LEARNED_POS_SCALE, authors);
    }

    #[test]
    fn scales_are_rounded_to_f32() {
        let config = TrmConfig {
            hidden_size: 512,
            ..TrmConfig::sudoku_extreme()
        };
        assert_eq!(embedding_scale(&config), 512f64.sqrt() as f32);
        assert_eq!(attention_scale(64), 0.125);
    }

    #[test]
    fn rope_tables_rotate_each_half_alike() {
        let (cos, sin) = rope_tables(3, 4, 10000.0);
        assert_eq!((cos.len(), sin.len()), (12, 12));
        // position 0: no rotation
        assert_eq!(&cos[..4], &[1.0; 4]);
        assert_eq!(&sin[..4], &[0.0; 4]);
        // position 1: frequencies 1 and 1/100, repeated for the second half
        let (c1, c2) = (1f64.cos() as f32, (0.01f32 as f64).cos() as f32);
        assert_eq!(&cos[4..8], &[c1, c2, c1, c2]);
        assert_eq!(sin[4], 1f64.sin() as f32);
    }
}
