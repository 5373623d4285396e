//! The input embedding, once per solve (`shaders/embed.wgsl`).
//!
//! The CPU function it must equal is `CpuEngine::embed` (`src/cpu/mod.rs`).

use crate::config::{PosEncodings, TrmConfig};
use crate::error::Result;
use crate::model::TrmModel;
use crate::model::maths::{LEARNED_POS_SCALE, embedding_scale};

use super::context::GpuContext;
use super::kernels::{KernelFile, KernelKey};
use super::layout::{self, Entry, Kernel};

/// The embedding kernel of a model of `config`: its tables are
/// `embed_tokens [vocab, D]` then, with learned positions, `embed_pos`.
pub(crate) fn key(config: &TrmConfig) -> KernelKey {
    let learned = config.pos_encodings == PosEncodings::Learned;
    KernelKey::plain(
        KernelFile::Embed,
        "main",
        vec![
            ("S", config.state_len() as f64),
            ("D", config.hidden_size as f64),
            ("P", config.puzzle_emb_positions() as f64),
            ("SEQ", config.seq_len as f64),
            ("NDIM", config.puzzle_emb_ndim as f64),
            ("POS_OFF", (config.vocab_size * config.hidden_size) as f64),
            ("HAS_POS", if learned { 1.0 } else { 0.0 }),
            ("SCALE", embedding_scale(config) as f64),
            ("POS_SCALE", LEARNED_POS_SCALE as f64),
        ],
    )
}

/// The embedding kernel of one model: its tables on the device.
pub(crate) struct Embed {
    kernel: Kernel,
    tables: wgpu::Buffer,
}

impl Embed {
    /// Uploads `embed_tokens | embed_pos` (widened to f32) and builds the
    /// pipeline. The puzzle-embedding table stays on the host: the rows of
    /// a chunk's puzzles travel with their token ids ([`Embed::ids_words`]).
    pub(crate) fn new(ctx: &GpuContext, model: &TrmModel) -> Result<Self> {
        let config = model.config();
        let w = model.weights();
        let mut tables = w.embed_tokens.to_f32();
        let pos_offset = tables.len();
        if let Some(p) = &w.embed_pos {
            tables.extend_from_slice(&p.to_f32());
        }
        let key = key(config);
        debug_assert_eq!(key.constants[5], ("POS_OFF", pos_offset as f64));
        debug_assert_eq!(key.constants[6].1 == 1.0, w.embed_pos.is_some());
        let tables = layout::upload_f32(ctx, "embedding tables", &tables)?;
        // ids, tables, xyz, params
        let entries = [
            Entry::ReadOnly,
            Entry::ReadOnly,
            Entry::ReadWrite,
            Entry::Params,
        ];
        let kernel = Kernel::new(ctx, key, &entries)?;
        Ok(Embed { kernel, tables })
    }

    /// 32-bit words of a chunk's ids buffer per puzzle: its token ids, its
    /// puzzle id and its row of the puzzle-embedding table (f32 bits),
    /// laid out `tokens [cap, SEQ] | ids [cap] | rows [cap, NDIM]`.
    pub(crate) fn ids_words(config: &crate::config::TrmConfig) -> u64 {
        (config.seq_len + 1 + config.puzzle_emb_ndim) as u64
    }

    /// The bind group of a chunk.
    pub(crate) fn bind_group(
        &self,
        ctx: &GpuContext,
        ids: &wgpu::Buffer,
        xyz: &wgpu::Buffer,
        params: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        self.kernel
            .bind_group(ctx, &[ids, &self.tables, xyz, params])
    }

    /// Records the embedding of `puzzles` puzzles.
    pub(crate) fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        puzzles: u32,
    ) {
        self.kernel.record(pass, bind_group, 0, puzzles);
    }
}
