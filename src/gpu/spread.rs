//! The small-batch ("spread") schedule: one network call cut into phases,
//! each one dispatch spread over the tiles of its output for the whole
//! batch at once (`shaders/spread_step.wgsl`, and the spread entry points
//! of `shaders/attention_step.wgsl`, whose headers state the contracts).
//!
//! The fused schedule gives each puzzle one workgroup, so at batch 1 a GPU
//! runs one workgroup per call. Here, per block:
//!
//! | MLP-mixer                          | attention                         |
//! |------------------------------------|-----------------------------------|
//! | token gate/up: [TI, B D], gated    | qkv: [B S, 3D]                    |
//! | token down: [S, B D], split-K      | RoPE (RoPE models)                |
//! | norm over S (+ residual, partials) | attention: B x heads x tiles      |
//! | channel gate/up: [CI, B S], gated  | o_proj: [B S, D], split-K         |
//! | channel down: [B S, D], split-K    | norm over D (+ residual)          |
//! | norm over D (+ residual, partials) | channel gate/up, down, norm       |
//!
//! after one injection dispatch per call: 1 + 6 L dispatches per call for
//! the MLP-mixer model, 1 + 8 L (7 L without RoPE) for attention, L the
//! call's blocks (TRM's L_layers; HRM's L_layers or H_layers, each level's
//! call planned on its own blocks). The products whose output is small
//! (the down projections, o_proj) split K until the phase has about
//! [`TARGET_GROUPS`] workgroups; each split
//! writes a partial sum and the norm after it adds them with the residual,
//! so no float atomics are needed. The phases are dispatches in one
//! compute pass: wgpu orders them with barriers, nothing waits on the host.
//!
//! Every phase reads one parameter block ([`Params`], the spread fields),
//! written by the host for the batch size; [`SpreadPlan`] computes them.

use crate::config::{Level, PosEncodings, TrmConfig};
use crate::error::Result;
use crate::weights::Precision;

use super::context::GpuContext;
use super::kernels::{self, DeviceKernels, KernelFile, KernelKey};
use super::layout::{Kernel, Params};
use super::step_common::{self, StepPipeline, matrix_groups, pad4};

/// Workgroups a phase aims for at small batch: enough for a large GPU
/// (an H200 has 132 SMs, an integrated GPU 8 to 96 units) without cutting
/// the reduction into slivers.
pub(crate) const TARGET_GROUPS: u32 = 256;
/// The shortest reduction one split of a product runs.
const MIN_SPLIT_K: u32 = 64;
/// Workgroups in x of a 2-D grid (a dimension may hold 65535 at least).
const GRID_X: u32 = 32768;

/// What one dispatch of the schedule runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Inject,
    Product,
    NormRows,
    NormCols,
    Rope,
    Attention,
}

impl Phase {
    /// Its kernel's entry point.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Inject => "spread_inject",
            Phase::Product => "spread_product",
            Phase::NormRows => "spread_norm_rows",
            Phase::NormCols => "spread_norm_cols",
            Phase::Rope => "spread_rope",
            Phase::Attention => "spread_attention",
        }
    }
}

/// One dispatch of a network call: its phase and workgroups.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dispatch {
    pub phase: Phase,
    pub groups: u32,
}

impl Dispatch {
    /// The 2-D grid of `groups` workgroups.
    pub fn grid(&self) -> [u32; 2] {
        if self.groups <= GRID_X {
            [self.groups.max(1), 1]
        } else {
            [GRID_X, self.groups.div_ceil(GRID_X)]
        }
    }
}

/// The dispatches of one network call and their parameter blocks.
pub(crate) struct CallPlan {
    pub dispatches: Vec<Dispatch>,
    pub blocks: Vec<Params>,
}

impl CallPlan {
    /// Workgroups of each dispatch of the call.
    #[cfg(test)]
    pub(crate) fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.dispatches.iter().map(|d| d.groups)
    }
}

/// The network calls of an ACT step at one batch size: the z update's
/// (`calls[0]`, the L-level blocks) and the y update's (`calls[1]`, the
/// H-level ones; TRM's are the same blocks). In the parameter buffer the
/// z update's blocks come first, then the y update's.
pub(crate) struct SpreadPlan {
    pub batch: u32,
    pub calls: [CallPlan; 2],
    /// Floats of split partial sums the plan needs after the work region.
    pub partial_floats: u64,
}

/// The pipelines of the spread schedule of one model, by phase.
pub(crate) struct SpreadKernels {
    kernels: Vec<(Phase, Kernel)>,
}

/// The kernel of each phase a model of `config` runs in this schedule, as
/// siblings of the step kernel (`precision`, `device`): spread_step.wgsl's
/// entry points, and for attention attention_step.wgsl's RoPE and
/// attention tiles.
pub(crate) fn phase_keys(
    config: &TrmConfig,
    precision: Precision,
    device: DeviceKernels,
) -> Vec<(Phase, KernelKey)> {
    let mut phases = vec![
        (Phase::Inject, KernelFile::SpreadStep, "spread_inject"),
        (Phase::Product, KernelFile::SpreadStep, "spread_product"),
        (Phase::NormRows, KernelFile::SpreadStep, "spread_norm_rows"),
    ];
    if config.mlp_t {
        phases.push((Phase::NormCols, KernelFile::SpreadStep, "spread_norm_cols"));
    } else {
        if kernels::has_rope(config) {
            phases.push((Phase::Rope, KernelFile::AttentionStep, "spread_rope"));
        }
        phases.push((
            Phase::Attention,
            KernelFile::AttentionStep,
            "spread_attention",
        ));
    }
    phases
        .into_iter()
        .map(|(phase, file, entry)| {
            let key = step_common::step_prelude_key(config, precision, device, file, entry);
            (phase, key)
        })
        .collect()
}

/// [`phase_keys`] without the phases.
#[cfg(test)]
pub(crate) fn sibling_keys(
    config: &TrmConfig,
    precision: Precision,
    device: DeviceKernels,
) -> Vec<KernelKey> {
    phase_keys(config, precision, device)
        .into_iter()
        .map(|(_, key)| key)
        .collect()
}

impl SpreadKernels {
    /// Builds the spread pipelines on the step kernel's bind group layout
    /// (so the chunk's step bind group serves both schedules).
    pub(crate) fn new(ctx: &GpuContext, config: &TrmConfig, step: &StepPipeline) -> Result<Self> {
        let kernels = phase_keys(config, step.precision(), step.device())
            .into_iter()
            .map(|(phase, key)| Ok((phase, step.sibling(ctx, key)?)))
            .collect::<Result<_>>()?;
        Ok(SpreadKernels { kernels })
    }

    /// Records one dispatch of a network call's plan, its parameter block
    /// at `offset`.
    pub(crate) fn record_dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        dispatch: &Dispatch,
        offset: u32,
    ) {
        let kernel = self.kernels.iter().find(|(p, _)| *p == dispatch.phase);
        if let Some((_, kernel)) = kernel {
            kernel.record_grid(pass, bind_group, offset, dispatch.grid());
        }
    }
}

/// Splits of K for a product of `tiles` output tiles and reduction `k`:
/// (splits, k per split, a multiple of `sk`).
fn split_k(tiles: u32, k: u32, sk: u32) -> (u32, u32) {
    let want = TARGET_GROUPS.div_ceil(tiles.max(1)).max(1);
    let most = (k / MIN_SPLIT_K).max(1);
    let splits = want.min(most);
    let chunk = k.div_ceil(splits).div_ceil(sk) * sk;
    (k.div_ceil(chunk), chunk)
}

/// Where a product's B operand is.
#[derive(Clone, Copy)]
enum Operand {
    /// The puzzle's state, element (k, c) at `k ks + c ns` of the puzzle.
    State { ks: u32, ns: u32 },
    /// The scratch, element (k, n) at `base + k ks + n ns`.
    Scratch { base: u32, ks: u32, ns: u32 },
}

/// One product of a block: W [m, k] (rows of kp weights from group
/// `w_off`, a group being 4 weights at the model's precision; `paired`:
/// gate then up rows), B, and where the output goes
/// (`o_ms`, `o_ns` strides from `o_base`); `split` allows split-K.
struct ProductSpec {
    w_off: u32,
    m: u32,
    k: u32,
    kp: u32,
    paired: bool,
    b: Operand,
    n_inner: u32,
    n_total: u32,
    o_base: u32,
    o_ms: u32,
    o_ns: u32,
    split: bool,
}

/// What a plan is made for: the model, its weights' precision, the batch,
/// where the split partials go, the K step.
struct Shape<'a> {
    config: &'a TrmConfig,
    precision: Precision,
    batch: u32,
    part_base: u32,
    sk: u32,
}

/// Builds the dispatches of a network call (see the module doc).
struct Planner<'a> {
    sk: u32,
    /// The update's base block (its state and injection regions).
    base: &'a Params,
    dispatches: Vec<Dispatch>,
    blocks: Vec<Params>,
    partial_floats: u64,
}

impl Planner<'_> {
    fn push(&mut self, phase: Phase, groups: u32, fill: impl Fn(&mut Params)) {
        self.dispatches.push(Dispatch { phase, groups });
        let mut block = Params {
            groups,
            ..*self.base
        };
        fill(&mut block);
        self.blocks.push(block);
    }

    /// A product; returns its splits (1 unless `spec.split`).
    fn product(&mut self, spec: ProductSpec) -> u32 {
        let rows = if spec.paired { 32 } else { 64 };
        let tiles_m = spec.m.div_ceil(rows);
        let tiles_n = spec.n_total.div_ceil(64);
        let (splits, k_chunk) = if spec.split {
            split_k(tiles_m * tiles_n, spec.k, self.sk)
        } else {
            (1, spec.kp.div_ceil(self.sk) * self.sk)
        };
        let o_split = spec.m * spec.n_total;
        if spec.split {
            self.partial_floats = self
                .partial_floats
                .max(u64::from(splits) * u64::from(o_split));
        }
        self.push(Phase::Product, tiles_m * tiles_n * splits, |p| {
            p.w_off = spec.w_off;
            p.m = spec.m;
            p.k = spec.k;
            p.kp = spec.kp;
            p.paired = u32::from(spec.paired);
            match spec.b {
                Operand::State { ks, ns } => {
                    p.b_state = 1;
                    p.b_ks = ks;
                    p.b_ns = ns;
                }
                Operand::Scratch { base, ks, ns } => {
                    p.b_base = base;
                    p.b_ks = ks;
                    p.b_ns = ns;
                }
            }
            p.n_inner = spec.n_inner;
            p.n_total = spec.n_total;
            p.o_base = spec.o_base;
            p.o_ms = spec.o_ms;
            p.o_ns = spec.o_ns;
            p.o_split = o_split;
            p.tiles_m = tiles_m;
            p.tiles_n = tiles_n;
            p.k_chunk = k_chunk;
            p.splits = splits;
        });
        splits
    }

    /// The residual add of `splits` partials at `part_base` and the norm
    /// over D of every token row.
    fn norm_rows(&mut self, tokens: u32, d: u32, part_base: u32, splits: u32) {
        self.push(Phase::NormRows, tokens, |p| {
            p.n_total = tokens;
            p.part_base = part_base;
            p.part_split = tokens * d;
            p.splits = splits;
        });
    }
}

/// Parameter blocks of the two calls' plans at most: 1 + 8 blocks per
/// layer for each level (RoPE attention has the most phases).
pub(crate) fn most_blocks(config: &TrmConfig) -> u64 {
    [Level::L, Level::H]
        .into_iter()
        .map(|level| 1 + 8 * config.level_layers(level).len() as u64)
        .sum()
}

impl SpreadPlan {
    /// The plans of the two network calls for `batch` active puzzles, on
    /// weights packed at `precision` (which sets the weight offsets).
    /// `bases` hold the z update's and the y update's state and injection
    /// regions (the fused blocks); the work region of the scratch starts at
    /// 0 and the split partials at `part_base`.
    pub(crate) fn new(
        config: &TrmConfig,
        precision: Precision,
        batch: u32,
        bases: [&Params; 2],
        part_base: u32,
        sk: u32,
    ) -> SpreadPlan {
        let [z, y] = bases;
        let shape = Shape {
            config,
            precision,
            batch,
            part_base,
            sk,
        };
        let (z, z_partials) = Self::call_plan(&shape, Level::L, z);
        let (y, y_partials) = Self::call_plan(&shape, Level::H, y);
        SpreadPlan {
            batch,
            calls: [z, y],
            partial_floats: z_partials.max(y_partials),
        }
    }

    /// The plan of the z update (`y_update` false) or of the y update.
    pub(crate) fn call(&self, y_update: bool) -> &CallPlan {
        &self.calls[usize::from(y_update)]
    }

    /// Every parameter block, in the buffer's order.
    pub(crate) fn blocks(&self) -> impl Iterator<Item = &Params> + '_ {
        self.calls.iter().flat_map(|c| &c.blocks)
    }

    /// The plan of one network call of `level` (its blocks from
    /// [`TrmConfig::level_layers`]) on the regions of `base`; returns it with
    /// the floats of split partials it needs.
    fn call_plan(shape: &Shape<'_>, level: Level, base: &Params) -> (CallPlan, u64) {
        let &Shape {
            config,
            precision,
            batch,
            part_base,
            sk,
        } = shape;
        // a weight matrix's groups in the packed layout (u32 offsets)
        let len = |rows: u32, kp: u32| matrix_groups(rows as usize, kp as usize, precision) as u32;
        let (s, d) = (config.state_len() as u32, config.hidden_size as u32);
        let (dp, ci) = (pad4(d as usize) as u32, config.channel_inter() as u32);
        let tokens = batch * s;
        let layers = config.level_layers(level);
        let layers = layers.start as u32..layers.end as u32;
        let mut plan = Planner {
            sk,
            base,
            dispatches: Vec::new(),
            blocks: Vec::new(),
            partial_floats: 0,
        };
        plan.push(Phase::Inject, (tokens * d).div_ceil(256), |p| {
            p.n_total = batch;
        });
        let ch_gu_len = len(2 * ci, dp);
        let ch_dn_len = len(d, ci);
        // the gated channel activations [CI, B S] at 0, partials at part_base
        let channel = |plan: &mut Planner<'_>, ch: u32| {
            plan.product(ProductSpec {
                w_off: ch,
                m: ci,
                k: d,
                kp: dp,
                paired: true,
                b: Operand::State { ks: 1, ns: d },
                n_inner: s,
                n_total: tokens,
                o_base: 0,
                o_ms: tokens,
                o_ns: 1,
                split: false,
            });
            let splits = plan.product(ProductSpec {
                w_off: ch + ch_gu_len,
                m: d,
                k: ci,
                kp: ci,
                paired: false,
                b: Operand::Scratch {
                    base: 0,
                    ks: tokens,
                    ns: 1,
                },
                n_inner: s,
                n_total: tokens,
                o_base: part_base,
                o_ms: 1,
                o_ns: d,
                split: true,
            });
            plan.norm_rows(tokens, d, part_base, splits);
        };
        if config.mlp_t {
            let ti = config.token_inter() as u32;
            let sp = pad4(s as usize) as u32;
            let tok_gu_len = len(2 * ti, sp);
            let tok_dn_len = len(s, ti);
            let layer_len = tok_gu_len + tok_dn_len + ch_gu_len + ch_dn_len;
            let columns = batch * d;
            for layer in layers.clone() {
                let w = layer * layer_len;
                // gated token activations [TI, B D] at 0
                plan.product(ProductSpec {
                    w_off: w,
                    m: ti,
                    k: s,
                    kp: sp,
                    paired: true,
                    b: Operand::State { ks: d, ns: 1 },
                    n_inner: d,
                    n_total: columns,
                    o_base: 0,
                    o_ms: columns,
                    o_ns: 1,
                    split: false,
                });
                let splits = plan.product(ProductSpec {
                    w_off: w + tok_gu_len,
                    m: s,
                    k: ti,
                    kp: ti,
                    paired: false,
                    b: Operand::Scratch {
                        base: 0,
                        ks: columns,
                        ns: 1,
                    },
                    n_inner: d,
                    n_total: columns,
                    o_base: part_base,
                    o_ms: columns,
                    o_ns: 1,
                    split: true,
                });
                plan.push(Phase::NormCols, columns.div_ceil(32), |p| {
                    p.n_total = columns;
                    p.part_base = part_base;
                    p.part_split = s * columns;
                    p.splits = splits;
                });
                channel(&mut plan, w + tok_gu_len + tok_dn_len);
            }
        } else {
            let qkv_len = len(3 * d, dp);
            let o_len = len(d, dp);
            let layer_len = qkv_len + o_len + ch_gu_len + ch_dn_len;
            let (heads, hd) = (config.num_heads as u32, config.head_dim() as u32);
            let tiles = heads * s.div_ceil(64) * hd.div_ceil(64);
            // qkv [B S, 3D] at 0, head outputs [B S, D] after it
            let heads_out = 3 * tokens * d;
            for layer in layers.clone() {
                let w = layer * layer_len;
                plan.product(ProductSpec {
                    w_off: w,
                    m: 3 * d,
                    k: d,
                    kp: dp,
                    paired: false,
                    b: Operand::State { ks: 1, ns: d },
                    n_inner: s,
                    n_total: tokens,
                    o_base: 0,
                    o_ms: 1,
                    o_ns: 3 * d,
                    split: false,
                });
                if config.pos_encodings == PosEncodings::Rope {
                    let pairs = tokens * 2 * heads * (hd / 2);
                    plan.push(Phase::Rope, pairs.div_ceil(256), |p| {
                        p.n_total = tokens;
                        p.b_base = 0;
                    });
                }
                plan.push(Phase::Attention, batch * tiles, |p| {
                    p.n_total = tokens;
                    p.b_base = 0;
                    p.o_base = heads_out;
                });
                let splits = plan.product(ProductSpec {
                    w_off: w + qkv_len,
                    m: d,
                    k: d,
                    kp: dp,
                    paired: false,
                    b: Operand::Scratch {
                        base: heads_out,
                        ks: 1,
                        ns: d,
                    },
                    n_inner: s,
                    n_total: tokens,
                    o_base: part_base,
                    o_ms: 1,
                    o_ns: d,
                    split: true,
                });
                plan.norm_rows(tokens, d, part_base, splits);
                channel(&mut plan, w + qkv_len + o_len);
            }
        }
        let Planner {
            dispatches,
            blocks,
            partial_floats,
            ..
        } = plan;
        (CallPlan { dispatches, blocks }, partial_floats)
    }
    /// Floats of split partials any batch of 1 to `capacity` puzzles needs.
    /// (The weights' precision moves offsets only, not the partials.)
    pub(crate) fn partial_floats_up_to(config: &TrmConfig, capacity: u32, sk: u32) -> u64 {
        let base = Params::default();
        // beyond TARGET_GROUPS puzzles every product has a tile per
        // puzzle at least, so nothing splits: the partials grow with the
        // batch, and the largest batch needs the most
        let mut most = 0;
        for batch in (1..=capacity.min(TARGET_GROUPS)).chain([capacity]) {
            let plan = SpreadPlan::new(config, Precision::F32, batch, [&base, &base], 0, sk);
            most = most.max(plan.partial_floats);
        }
        most
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_k_covers_k_in_whole_steps() {
        for (tiles, k) in [(1, 512), (16, 1536), (16, 97), (300, 512), (2, 20), (5, 4)] {
            let (splits, chunk) = split_k(tiles, k, 16);
            assert_eq!(chunk % 16, 0);
            assert!(splits * chunk >= k, "{tiles} {k}");
            assert!((splits - 1) * chunk < k, "{tiles} {k}: an empty split");
        }
        // enough splits for the target, none shorter than MIN_SPLIT_K
        assert_eq!(split_k(16, 1536, 16), (16, 96));
        assert_eq!(split_k(16, 512, 16), (8, 64));
        assert_eq!(split_k(512, 512, 16).0, 1);
    }

    #[test]
    fn sudoku_at_batch_1_spreads_every_phase() {
        let config = TrmConfig::sudoku_extreme();
        let base = Params::default();
        let plan = SpreadPlan::new(&config, Precision::F32, 1, [&base, &base], 0, 16);
        let call = plan.call(false);
        assert_eq!(call.dispatches.len(), 1 + 6 * config.l_layers);
        assert_eq!(plan.blocks().count(), 2 * call.dispatches.len());
        let mut groups: Vec<u32> = call.groups().collect();
        groups.sort();
        assert!(groups[groups.len() / 2] >= 64, "{groups:?}");
        assert!(groups[0] >= 16, "{groups:?}");
    }

    #[test]
    fn large_grids_stay_within_a_dimension() {
        let dispatch = Dispatch {
            phase: Phase::Product,
            groups: 100_000,
        };
        let [x, y] = dispatch.grid();
        assert!(x <= 65535 && y <= 65535 && x * y >= 100_000);
    }
}
