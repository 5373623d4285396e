//! The CPU engine: the reference every other engine is diffed against.
//!
//! It follows `shared/TRM.md` line by line. The matrix products go to faer;
//! puzzles of a batch run in parallel on a rayon pool, and a lone puzzle
//! spreads its matrix products over the pool instead.

mod block;
pub(crate) mod ops;

use std::sync::Arc;

use faer::Par;
use rayon::prelude::*;

use crate::batch::PuzzleBatch;
use crate::config::{PosEncodings, TrmConfig};
use crate::error::{Result, TrmError};
use crate::model::TrmModel;
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};

pub use ops::rope_tables;

/// Scale of the learned position embedding: the authors write 0.707106781,
/// which rounds to the same f32 as 1/sqrt(2).
const LEARNED_POS_SCALE: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Runs TRM on the CPU.
pub struct CpuEngine {
    model: Arc<TrmModel>,
    /// `(cos, sin)`, each `[S, head_dim]`, for RoPE models.
    rope: Option<(Vec<f32>, Vec<f32>)>,
    pool: rayon::ThreadPool,
    threads: usize,
}

/// Per-task scratch memory, allocated once per solve and reused by every
/// recursion step.
struct Scratch {
    /// `y + x`, the injection of the latent updates, `[S, D]`.
    injection: Vec<f32>,
    /// Output of gate_up / qkv: `max(2 inter(S) D, S 2 inter(D), S 3D)`.
    wide: Vec<f32>,
    /// Gated activations or attention output: `max(inter(S) D, S inter(D), S D)`.
    gated: Vec<f32>,
    /// Output of the down projection / o_proj, `[S, D]`.
    update: Vec<f32>,
    /// Attention scores of one head `[S, S]`, or column sums `[D]`.
    scores: Vec<f32>,
}

impl Scratch {
    fn new(config: &TrmConfig) -> Self {
        let (s, d) = (config.state_len(), config.hidden_size);
        let (ci, ti) = (config.channel_inter(), config.token_inter());
        let (wide, gated, scores) = if config.mlp_t {
            ((2 * ti * d).max(2 * s * ci), (ti * d).max(s * ci), d)
        } else {
            (
                (3 * s * d).max(2 * s * ci),
                (s * d).max(s * ci),
                (s * s).max(d),
            )
        };
        Scratch {
            injection: vec![0.0; s * d],
            wide: vec![0.0; wide],
            gated: vec![0.0; gated],
            update: vec![0.0; s * d],
            scores: vec![0.0; scores],
        }
    }
}

/// One puzzle's share of a solve: inputs, state and output slots.
struct PuzzleSlot<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
    z: &'a mut [f32],
    logits: &'a mut [f32],
    q_halt: &'a mut f32,
    q_continue: &'a mut f32,
    steps: &'a mut u32,
}

impl CpuEngine {
    /// An engine on all available cores.
    pub fn new(model: Arc<TrmModel>) -> Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(model, threads)
    }

    /// An engine on `threads` worker threads.
    pub fn with_threads(model: Arc<TrmModel>, threads: usize) -> Result<Self> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("trm-cpu-{i}"))
            .build()
            .map_err(|e| TrmError::Input(format!("cannot start {threads} CPU threads: {e}")))?;
        let config = model.config();
        let rope = (!config.mlp_t && config.pos_encodings == PosEncodings::Rope)
            .then(|| rope_tables(config.state_len(), config.head_dim(), config.rope_theta));
        Ok(CpuEngine {
            model,
            rope,
            pool,
            threads,
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<TrmModel> {
        &self.model
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The embedded input x, `[B, S, D]`: puzzle embedding (zero-padded to P
    /// positions) before the token embeddings, learned positions if any,
    /// all scaled by sqrt(D).
    pub fn embed(&self, batch: &PuzzleBatch) -> Vec<f32> {
        let config = self.model.config();
        let w = self.model.weights();
        let (s, d) = (config.state_len(), config.hidden_size);
        let p = config.puzzle_emb_positions();
        let scale = (d as f32).sqrt();
        let mut x = vec![0.0f32; batch.len() * s * d];
        for (b, puzzle) in x.chunks_exact_mut(s * d).enumerate() {
            if let Some(table) = &w.puzzle_emb {
                let n = config.puzzle_emb_ndim;
                let id = batch.puzzle_ids()[b] as usize;
                // zero padding: positions beyond ndim stay 0
                puzzle[..n].copy_from_slice(&table[id * n..(id + 1) * n]);
            }
            for (row, &token) in puzzle[p * d..]
                .chunks_exact_mut(d)
                .zip(batch.puzzle_tokens(b))
            {
                let t = token as usize;
                row.copy_from_slice(&w.embed_tokens[t * d..(t + 1) * d]);
            }
            if let Some(pos) = &w.embed_pos {
                for (v, e) in puzzle.iter_mut().zip(pos) {
                    *v = LEARNED_POS_SCALE * (*v + e);
                }
            }
            puzzle.iter_mut().for_each(|v| *v *= scale);
        }
        x
    }

    /// One network call: `state = net(state, injection)`.
    fn net(&self, state: &mut [f32], injection: &[f32], scratch: &mut Scratch, par: Par) {
        for (h, i) in state.iter_mut().zip(injection) {
            *h += i;
        }
        for layer in &self.model.weights().layers {
            block::token_mixer(self, layer, state, scratch, par);
            block::channel_mlp(self, layer, state, scratch, par);
        }
    }

    /// One ACT step on one puzzle: T answer updates, each after n latent
    /// updates.
    fn act_step(&self, x: &[f32], y: &mut [f32], z: &mut [f32], scratch: &mut Scratch, par: Par) {
        let config = self.model.config();
        for _ in 0..config.h_cycles {
            // The injection of the latent updates is y + x, summed first.
            let mut injection = std::mem::take(&mut scratch.injection);
            for ((i, a), b) in injection.iter_mut().zip(y.iter()).zip(x) {
                *i = a + b;
            }
            for _ in 0..config.l_cycles {
                self.net(z, &injection, scratch, par);
            }
            scratch.injection = injection;
            self.net(y, z, scratch, par);
        }
    }

    /// Output heads of one puzzle: logits of the sequence positions and the
    /// two Q logits from position 0.
    fn heads(&self, y: &[f32], logits: &mut [f32]) -> (f32, f32) {
        let config = self.model.config();
        let w = self.model.weights();
        let d = config.hidden_size;
        let p = config.puzzle_emb_positions();
        let (seq, vocab) = (config.seq_len, config.vocab_size);
        ops::matmul_into(
            ops::mat_mut(logits, seq, vocab),
            ops::mat(&y[p * d..], seq, d),
            ops::mat(&w.lm_head, vocab, d).transpose(),
            Par::Seq,
        );
        let dot = |row: &[f32]| -> f32 { row.iter().zip(&y[..d]).map(|(a, b)| a * b).sum() };
        (
            dot(&w.q_head_weight[..d]) + w.q_head_bias[0],
            dot(&w.q_head_weight[d..2 * d]) + w.q_head_bias[1],
        )
    }

    fn solve_puzzle(
        &self,
        slot: PuzzleSlot<'_>,
        act_steps: usize,
        early_halt: bool,
        scratch: &mut Scratch,
        par: Par,
    ) {
        for step in 1..=act_steps {
            self.act_step(slot.x, slot.y, slot.z, scratch, par);
            if early_halt || step == act_steps {
                let (q_halt, q_continue) = self.heads(slot.y, slot.logits);
                *slot.q_halt = q_halt;
                *slot.q_continue = q_continue;
                *slot.steps = step as u32;
                if early_halt && q_halt > 0.0 {
                    return;
                }
            }
        }
    }
}

impl Engine for CpuEngine {
    fn config(&self) -> &TrmConfig {
        self.model.config()
    }

    fn describe(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn solve_from(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        let config = self.model.config();
        if batch.seq_len() != config.seq_len {
            return Err(TrmError::Input(format!(
                "the batch has seq_len {}, the model {}",
                batch.seq_len(),
                config.seq_len
            )));
        }
        let act_steps = options.resolved_act_steps(config)?;
        let b = batch.len();
        let (s, d) = (config.state_len(), config.hidden_size);
        let x = self.embed(batch);
        let carry = match carry {
            Some(c) => {
                c.check(config, b)?;
                c.clone()
            }
            None => {
                let w = self.model.weights();
                Carry::initial(&w.h_init, &w.l_init, b, s)
            }
        };
        let mut out = SolveOutput::poisoned(config, b);
        out.z_h = carry.z_h;
        out.z_l = carry.z_l;

        let slots: Vec<PuzzleSlot<'_>> = x
            .chunks_exact(s * d)
            .zip(out.z_h.chunks_exact_mut(s * d))
            .zip(out.z_l.chunks_exact_mut(s * d))
            .zip(
                out.logits
                    .chunks_exact_mut(config.seq_len * config.vocab_size),
            )
            .zip(out.q_halt_logits.iter_mut())
            .zip(out.q_continue_logits.iter_mut())
            .zip(out.steps.iter_mut())
            .map(
                |((((((x, y), z), logits), q_halt), q_continue), steps)| PuzzleSlot {
                    x,
                    y,
                    z,
                    logits,
                    q_halt,
                    q_continue,
                    steps,
                },
            )
            .collect();
        // Enough puzzles to keep every thread busy: one puzzle per task.
        // Fewer: each puzzle's matrix products use the whole pool.
        let par = if b >= self.threads {
            Par::Seq
        } else {
            Par::rayon(self.threads)
        };
        let early_halt = options.early_halt;
        self.pool.install(|| {
            slots.into_par_iter().for_each_init(
                || Scratch::new(config),
                |scratch, slot| self.solve_puzzle(slot, act_steps, early_halt, scratch, par),
            )
        });
        Ok(out)
    }
}
