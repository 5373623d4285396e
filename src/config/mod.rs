//! The model configuration, under the official field names, and the sizes
//! derived from it (see `shared/TRM.md`, Configuration).

pub mod state_dict;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrmError};

/// Positional encoding of the model (`pos_encodings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosEncodings {
    /// No positional information (the Sudoku MLP-mixer).
    None,
    /// Rotary embeddings on q and k (attention variant).
    Rope,
    /// A learned `[S, D]` table added at embedding time.
    Learned,
}

impl PosEncodings {
    /// The official spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PosEncodings::None => "none",
            PosEncodings::Rope => "rope",
            PosEncodings::Learned => "learned",
        }
    }
}

/// The model family (`arch`): TRM, or its predecessor HRM, whose answer
/// state z_H is updated by a second network of its own (`shared/TRM.md`,
/// HRM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Tiny Recursive Model: one network (`inner.L_level`) updates both
    /// states; halting on `q_halt > 0`.
    #[default]
    Trm,
    /// Hierarchical Reasoning Model: z_L by `inner.L_level`, z_H by
    /// `inner.H_level` (`H_layers` blocks); halting on `q_halt > q_continue`.
    Hrm,
}

impl Arch {
    /// The spelling of the project's configuration (`trm`, `hrm`).
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Trm => "trm",
            Arch::Hrm => "hrm",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = TrmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "trm" => Ok(Arch::Trm),
            "hrm" => Ok(Arch::Hrm),
            other => Err(TrmError::Config(format!(
                "arch `{other}` is not one of trm, hrm"
            ))),
        }
    }
}

/// Which of the two updates of an ACT step a network call is: the latent
/// z_L (`L_level`) or the answer z_H (`H_level`). In TRM both run the same
/// blocks; in HRM each level has its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `z_L = net(z_L, z_H + x)`.
    L,
    /// `z_H = net(z_H, z_L)`.
    H,
}

impl std::str::FromStr for PosEncodings {
    type Err = TrmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(PosEncodings::None),
            "rope" => Ok(PosEncodings::Rope),
            "learned" => Ok(PosEncodings::Learned),
            other => Err(TrmError::Config(format!(
                "pos_encodings `{other}` is not one of none, rope, learned"
            ))),
        }
    }
}

/// Upper bound on any single size of a configuration. Generous for TRM
/// (D = 512, S = 916), small enough that products of a few sizes cannot
/// overflow a `u64` and a lying header cannot ask for absurd allocations.
const MAX_DIM: usize = 1 << 20;

/// Upper bound on the puzzle identifiers (rows of the puzzle-embedding
/// table): the ARC-AGI-2 checkpoints have about 1.2M, one per augmented
/// puzzle; 16M leaves room for larger augmentations while a lying header
/// is still refused by the tensor shapes and file sizes it must agree with.
const MAX_PUZZLE_IDENTIFIERS: usize = 1 << 24;

/// Upper bound on the element count of the whole parameter set (16 GiB of
/// f32): far above any TRM, far below what would overflow.
const MAX_PARAMETERS: u64 = 1 << 32;

/// TRM configuration with the official field names (`arch` section of the
/// authors' `all_config.yaml`, plus `seq_len`, `vocab_size` and
/// `num_puzzle_identifiers` from the data set).
///
/// Build one with [`TrmConfig::from_json`] or by filling the fields and
/// calling [`TrmConfig::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct TrmConfig {
    /// The model family: TRM (one network) or HRM (two); a configuration
    /// without `arch` is TRM's.
    pub arch: Arch,
    /// Tokens per puzzle.
    pub seq_len: usize,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Rows of the puzzle-embedding table.
    pub num_puzzle_identifiers: usize,
    /// Width D.
    pub hidden_size: usize,
    /// SwiGLU expansion factor.
    pub expansion: f64,
    /// Attention heads (attention variant only).
    pub num_heads: usize,
    /// T: answer updates per ACT step.
    #[serde(rename = "H_cycles")]
    pub h_cycles: usize,
    /// n: latent updates per answer update.
    #[serde(rename = "L_cycles")]
    pub l_cycles: usize,
    /// Blocks in the network (HRM: in the L-level network).
    #[serde(rename = "L_layers")]
    pub l_layers: usize,
    /// Blocks in HRM's H-level network; 0 for TRM, which has none.
    #[serde(rename = "H_layers", skip_serializing_if = "is_zero")]
    pub h_layers: usize,
    /// N_sup: ACT (supervision) steps.
    pub halt_max_steps: usize,
    /// true: MLP-mixer block; false: attention block.
    pub mlp_t: bool,
    /// Positional encoding.
    pub pos_encodings: PosEncodings,
    /// Puzzle-embedding width (0: none).
    pub puzzle_emb_ndim: usize,
    /// Positions the puzzle embedding takes (0: ceil(puzzle_emb_ndim / D)).
    pub puzzle_emb_len: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
}

/// What a configuration file may say; missing fields get the official
/// defaults in the conversion to [`TrmConfig`].
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    arch: Option<String>,
    seq_len: usize,
    vocab_size: usize,
    #[serde(default = "default_num_puzzle_identifiers")]
    num_puzzle_identifiers: usize,
    hidden_size: usize,
    expansion: f64,
    #[serde(default = "default_num_heads")]
    num_heads: usize,
    #[serde(rename = "H_cycles")]
    h_cycles: usize,
    #[serde(rename = "L_cycles")]
    l_cycles: usize,
    #[serde(rename = "L_layers")]
    l_layers: usize,
    #[serde(rename = "H_layers", default)]
    h_layers: Option<usize>,
    halt_max_steps: usize,
    #[serde(default)]
    mlp_t: bool,
    pos_encodings: String,
    #[serde(default)]
    puzzle_emb_ndim: usize,
    #[serde(default)]
    puzzle_emb_len: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
}

/// The product of `factors`, `u64::MAX` where it would overflow.
fn saturating_product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
fn default_num_puzzle_identifiers() -> usize {
    1
}
fn default_num_heads() -> usize {
    1
}
fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10000.0
}

impl TryFrom<RawConfig> for TrmConfig {
    type Error = TrmError;
    fn try_from(raw: RawConfig) -> Result<Self> {
        let arch: Arch = match &raw.arch {
            Some(name) => name.parse()?,
            None => Arch::Trm,
        };
        let h_layers = match (arch, raw.h_layers) {
            (Arch::Hrm, Some(n)) => n,
            (Arch::Hrm, None) => {
                return Err(TrmError::Config(
                    "an HRM configuration needs H_layers".into(),
                ));
            }
            // TRM's own configurations carry an unused H_layers (0)
            (Arch::Trm, _) => 0,
        };
        let config = TrmConfig {
            arch,
            seq_len: raw.seq_len,
            vocab_size: raw.vocab_size,
            num_puzzle_identifiers: raw.num_puzzle_identifiers,
            hidden_size: raw.hidden_size,
            expansion: raw.expansion,
            num_heads: raw.num_heads,
            h_cycles: raw.h_cycles,
            l_cycles: raw.l_cycles,
            l_layers: raw.l_layers,
            h_layers,
            halt_max_steps: raw.halt_max_steps,
            mlp_t: raw.mlp_t,
            pos_encodings: raw.pos_encodings.parse()?,
            puzzle_emb_ndim: raw.puzzle_emb_ndim,
            // TRM's default is 16, which its code can only run with a
            // puzzle embedding; without one the only working value is 0.
            // HRM has no such setting: always ceil(ndim / D), written 0.
            puzzle_emb_len: raw.puzzle_emb_len.unwrap_or(
                if raw.puzzle_emb_ndim > 0 && arch == Arch::Trm {
                    16
                } else {
                    0
                },
            ),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
        };
        config.validate()?;
        Ok(config)
    }
}

/// SwiGLU intermediate width for input width `width`:
/// `256 * ceil(round(expansion * width * 2 / 3) / 256)`, with Python's
/// round-half-to-even.
pub fn swiglu_inter(expansion: f64, width: usize) -> usize {
    let exact = expansion * width as f64 * 2.0 / 3.0;
    let rounded = exact.round_ties_even().max(0.0) as usize;
    rounded.div_ceil(256) * 256
}

impl TrmConfig {
    /// The shape of the paper's Sudoku-Extreme TRM-MLP (D = 512, S = 97,
    /// n = 6, T = 3, 2 layers, 16 ACT steps, 5.03M parameters): the default
    /// workload of `trm bench`.
    pub fn sudoku_extreme() -> Self {
        TrmConfig {
            arch: Arch::Trm,
            seq_len: 81,
            vocab_size: 11,
            num_puzzle_identifiers: 1,
            hidden_size: 512,
            expansion: 4.0,
            num_heads: 8,
            h_cycles: 3,
            l_cycles: 6,
            l_layers: 2,
            h_layers: 0,
            halt_max_steps: 16,
            mlp_t: true,
            pos_encodings: PosEncodings::None,
            puzzle_emb_ndim: 512,
            puzzle_emb_len: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
        }
    }

    /// The published HRM's shape at Sudoku-Extreme (D = 512, 8 heads, RoPE,
    /// H_layers = L_layers = 4, H_cycles = L_cycles = 2, S = 81 + 1,
    /// 16 ACT steps, 27.3M parameters): `trm bench --arch hrm`.
    pub fn hrm_sudoku_extreme() -> Self {
        TrmConfig {
            arch: Arch::Hrm,
            h_cycles: 2,
            l_cycles: 2,
            l_layers: 4,
            h_layers: 4,
            mlp_t: false,
            pos_encodings: PosEncodings::Rope,
            puzzle_emb_len: 0,
            ..Self::sudoku_extreme()
        }
    }

    /// Parses a JSON object with the official field names and validates it.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| TrmError::Config(format!("config JSON: {e}")))
    }

    /// The configuration as a JSON object with the official field names.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Checks the configuration on its own: positive sizes and cycle counts,
    /// heads that divide the width, even head width for RoPE, puzzle
    /// embedding length consistent with its width, sizes within bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(TrmError::Config(msg));
        for (name, value) in [
            ("seq_len", self.seq_len),
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("H_cycles", self.h_cycles),
            ("L_cycles", self.l_cycles),
            ("L_layers", self.l_layers),
            ("halt_max_steps", self.halt_max_steps),
        ] {
            if value == 0 {
                return bad(format!("{name} must be positive"));
            }
            if value > MAX_DIM {
                return bad(format!("{name} = {value} exceeds the limit {MAX_DIM}"));
            }
        }
        match self.arch {
            Arch::Trm if self.h_layers != 0 => {
                return bad(format!(
                    "H_layers = {} belongs to HRM; a TRM has one network (set arch hrm, or H_layers 0)",
                    self.h_layers
                ));
            }
            Arch::Hrm if self.h_layers == 0 => return bad("H_layers must be positive".into()),
            Arch::Hrm if self.h_layers > MAX_DIM => {
                return bad(format!("H_layers exceeds the limit {MAX_DIM}"));
            }
            _ => {}
        }
        if self.num_puzzle_identifiers == 0 {
            return bad("num_puzzle_identifiers must be positive".into());
        }
        if self.num_puzzle_identifiers > MAX_PUZZLE_IDENTIFIERS {
            return bad(format!(
                "num_puzzle_identifiers = {} exceeds the limit {MAX_PUZZLE_IDENTIFIERS}",
                self.num_puzzle_identifiers
            ));
        }
        if self.puzzle_emb_ndim > MAX_DIM || self.puzzle_emb_len > MAX_DIM {
            return bad(format!("puzzle embedding sizes exceed the limit {MAX_DIM}"));
        }
        if !(self.expansion.is_finite() && self.expansion > 0.0 && self.expansion <= 64.0) {
            return bad(format!(
                "expansion must be a positive number up to 64, got {}",
                self.expansion
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "rms_norm_eps must be positive, got {}",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!(
                "rope_theta must be positive, got {}",
                self.rope_theta
            ));
        }
        let minimum_len = self.puzzle_emb_ndim.div_ceil(self.hidden_size);
        if self.puzzle_emb_ndim == 0 && self.puzzle_emb_len != 0 {
            return bad(format!(
                "puzzle_emb_len = {} needs a puzzle embedding, but puzzle_emb_ndim is 0 (use puzzle_emb_len 0)",
                self.puzzle_emb_len
            ));
        }
        if self.arch == Arch::Hrm && self.puzzle_emb_len != 0 && self.puzzle_emb_len != minimum_len
        {
            return bad(format!(
                "HRM places its puzzle embedding in ceil(puzzle_emb_ndim / hidden_size) = {minimum_len} positions, not puzzle_emb_len = {}",
                self.puzzle_emb_len
            ));
        }
        if self.puzzle_emb_len != 0 && self.puzzle_emb_len < minimum_len {
            return bad(format!(
                "puzzle_emb_len = {} cannot hold puzzle_emb_ndim = {} at hidden_size {} (at least {minimum_len} positions, or 0)",
                self.puzzle_emb_len, self.puzzle_emb_ndim, self.hidden_size
            ));
        }
        if !self.mlp_t {
            if !self.hidden_size.is_multiple_of(self.num_heads) {
                return bad(format!(
                    "hidden_size {} is not divisible by num_heads {}",
                    self.hidden_size, self.num_heads
                ));
            }
            if self.pos_encodings == PosEncodings::Rope && !self.head_dim().is_multiple_of(2) {
                return bad(format!(
                    "RoPE needs an even head width, but hidden_size / num_heads = {}",
                    self.head_dim()
                ));
            }
        }
        if self.state_len() > MAX_DIM {
            return bad(format!("seq_len + puzzle_emb_len exceeds {MAX_DIM}"));
        }
        let params = self.parameter_count();
        if params > MAX_PARAMETERS {
            return bad(format!(
                "the configuration implies {params} parameters, beyond the limit {MAX_PARAMETERS}"
            ));
        }
        Ok(())
    }

    /// P: positions taken by the puzzle embedding.
    pub fn puzzle_emb_positions(&self) -> usize {
        if self.puzzle_emb_len == 0 {
            self.puzzle_emb_ndim.div_ceil(self.hidden_size.max(1))
        } else {
            self.puzzle_emb_len
        }
    }

    /// S = seq_len + P: length of every state tensor.
    pub fn state_len(&self) -> usize {
        self.seq_len + self.puzzle_emb_positions()
    }

    /// Intermediate width of the channel SwiGLU, inter(D).
    pub fn channel_inter(&self) -> usize {
        swiglu_inter(self.expansion, self.hidden_size)
    }

    /// Intermediate width of the token-mixing SwiGLU, inter(S).
    pub fn token_inter(&self) -> usize {
        swiglu_inter(self.expansion, self.state_len())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// Network calls per ACT step: T x (n + 1).
    pub fn recursion_steps_per_act_step(&self) -> usize {
        self.h_cycles * (self.l_cycles + 1)
    }

    /// Blocks stored for all networks: TRM's L_layers, HRM's L-level then
    /// H-level blocks.
    pub fn stored_layers(&self) -> usize {
        self.l_layers + self.h_layers
    }

    /// The blocks (indices into [`crate::model::TrmWeights::layers`]) a
    /// network call of `level` runs: TRM's one network for both, HRM's
    /// L-level blocks first, then its H-level blocks.
    pub fn level_layers(&self, level: Level) -> std::ops::Range<usize> {
        match (self.arch, level) {
            (Arch::Hrm, Level::H) => self.l_layers..self.l_layers + self.h_layers,
            _ => 0..self.l_layers,
        }
    }

    /// Whether a puzzle with these Q logits halts early: TRM's
    /// `q_halt > 0`, HRM's `q_halt > q_continue` (what each was trained
    /// for).
    pub fn halts(&self, q_halt: f32, q_continue: f32) -> bool {
        match self.arch {
            Arch::Trm => q_halt > 0.0,
            Arch::Hrm => q_halt > q_continue,
        }
    }

    /// Multiply-add FLOPs of one network call for one puzzle (matrix
    /// products only, 2 per multiply-add), as TRM.md counts them; for HRM
    /// the mean over an ACT step's calls (both levels cost the same when
    /// H_layers = L_layers, as published).
    pub fn flops_per_recursion_step(&self) -> u64 {
        self.flops_per_act_step_networks() / self.recursion_steps_per_act_step().max(1) as u64
    }

    /// FLOPs of the network calls of one ACT step for one puzzle.
    ///
    /// These counts saturate: a valid configuration may ask for 2^20 cycles
    /// of 2^20 positions, beyond what a `u64` counts.
    fn flops_per_act_step_networks(&self) -> u64 {
        (self.l_cycles as u64)
            .saturating_mul(self.flops_per_net_call(Level::L))
            .saturating_add(self.flops_per_net_call(Level::H))
            .saturating_mul(self.h_cycles as u64)
    }

    /// FLOPs of the costlier of the two network calls for one puzzle: what
    /// one dispatch of a call may hold.
    pub fn flops_per_largest_net_call(&self) -> u64 {
        self.flops_per_net_call(Level::L)
            .max(self.flops_per_net_call(Level::H))
    }

    /// FLOPs of one network call of `level` for one puzzle.
    pub fn flops_per_net_call(&self, level: Level) -> u64 {
        (self.level_layers(level).len() as u64).saturating_mul(self.flops_per_block())
    }

    /// FLOPs of one block for one puzzle.
    pub fn flops_per_block(&self) -> u64 {
        let s = self.state_len() as u64;
        let d = self.hidden_size as u64;
        let channel = saturating_product(&[6, s, d, self.channel_inter() as u64]);
        let mixer = if self.mlp_t {
            saturating_product(&[6, s, d, self.token_inter() as u64])
        } else {
            // qkv + o_proj + scores + weighted sum
            saturating_product(&[8, s, d, d]).saturating_add(saturating_product(&[4, s, s, d]))
        };
        channel.saturating_add(mixer)
    }

    /// FLOPs of the output heads for one puzzle (lm_head and q_head).
    pub fn flops_per_heads(&self) -> u64 {
        let d = self.hidden_size as u64;
        saturating_product(&[2, self.seq_len as u64, d, self.vocab_size as u64])
            .saturating_add(d.saturating_mul(4))
    }

    /// FLOPs of one ACT step for one puzzle.
    pub fn flops_per_act_step(&self) -> u64 {
        self.flops_per_act_step_networks()
            .saturating_add(self.flops_per_heads())
    }

    /// FLOPs of a full solve (halt_max_steps ACT steps) for one puzzle.
    pub fn flops_per_puzzle(&self) -> u64 {
        (self.halt_max_steps as u64).saturating_mul(self.flops_per_act_step())
    }

    /// Number of trainable parameters (and init buffers) the configuration
    /// implies; saturates instead of overflowing.
    pub fn parameter_count(&self) -> u64 {
        state_dict::expected_tensors(self)
            .iter()
            .map(|(_, shape)| {
                shape
                    .iter()
                    .fold(1u64, |acc, &x| acc.saturating_mul(x as u64))
            })
            .fold(0u64, |acc, n| acc.saturating_add(n))
    }
}

#[cfg(test)]
mod tests;
