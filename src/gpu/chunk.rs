//! A chunk: the device buffers of up to `capacity` puzzles in flight (the
//! solve program's slots), and [`ChunkLayout`], the one statement of where
//! every value lives in them.
//!
//! Buffers, each indexed in 4-byte words from its start:
//!
//! | buffer  | layout                                                        |
//! |---------|---------------------------------------------------------------|
//! | xyz     | x, y = z_H, z = z_L: each `[capacity + 1][S][D]` (the last a spare puzzle the spread schedule computes halted puzzles' columns on) |
//! | ids     | tokens `[cap][seq]` \| puzzle ids `[cap]` \| puzzle-table rows `[cap][ndim]` |
//! | out     | logits `[cap][seq][vocab]` \| q `[cap][2]`                      |
//! | control | running count, ACT steps done, one indirect dispatch per slice \| each puzzle's ACT steps `[cap]` (`shaders/halt.wgsl`) |
//! | active  | the running list: workgroup -> puzzle                          |
//! | scratch | the kernels' work `[cap][per puzzle]` \| the spread schedule's split partials \| (from a multiple of 4) the kernels' reports |
//! | params  | per slice the fused blocks ([`FusedBlocks`]), then the spread plan's |

use crate::config::{Level, TrmConfig};
use crate::error::{Result, TrmError};
use crate::model::TrmModel;

use super::budget;
use super::context::GpuContext;
use super::embed::Embed;
use super::halt;
use super::layout::{self, PARAMS_BYTES, Params};
use super::options::GpuRunOptions;
use super::resident::{Resident, StepKernel};
use super::spread::{self, SpreadPlan};

/// Bytes of a word (f32 or u32).
pub(super) const WORD: u64 = 4;

/// The kernels' report slots at the end of the scratch (step_common.wgsl,
/// `report_lanes`): the lane width each kind of kernel found.
pub(super) const REPORT_WORDS: u64 = 4;

/// One of the three state regions of `xyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// x, the embedded input.
    X = 0,
    /// y = z_H.
    Y = 1,
    /// z = z_L.
    Z = 2,
}

/// Where every value of a chunk lives, in words from its buffer's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ChunkLayout {
    /// Puzzles the chunk holds.
    pub capacity: u64,
    seq: u64,
    vocab: u64,
    /// S x D: one puzzle's state.
    sd: u64,
    ndim: u64,
    /// Fused dispatches per network call (the halting kernel writes one
    /// indirect dispatch per slice).
    slices: u32,
    /// The kernels' per-puzzle work region.
    work: u64,
    /// The spread schedule's split partials, after the work region.
    partials: u64,
}

impl ChunkLayout {
    /// The layout of `capacity` puzzles of `config`, `slices` fused
    /// dispatches a call, `partials` words of split partials.
    pub fn new(config: &TrmConfig, capacity: u64, slices: u32, partials: u64) -> Self {
        ChunkLayout {
            capacity,
            seq: config.seq_len as u64,
            vocab: config.vocab_size as u64,
            sd: (config.state_len() * config.hidden_size) as u64,
            ndim: config.puzzle_emb_ndim as u64,
            slices,
            work: StepKernel::scratch_floats(config) as u64,
            partials,
        }
    }

    // ---- xyz

    /// Words of each state region: the chunk's puzzles and the spare.
    pub fn region(&self) -> u64 {
        (self.capacity + 1) * self.sd
    }

    /// Words of `xyz`.
    pub fn xyz_words(&self) -> u64 {
        3 * self.region()
    }

    /// The first word of puzzle `p`'s `state`.
    pub fn state(&self, state: State, p: u64) -> u64 {
        state as u64 * self.region() + p * self.sd
    }

    /// Words of one puzzle's state.
    pub fn state_words(&self) -> u64 {
        self.sd
    }

    // ---- ids

    /// Puzzle `p`'s token ids.
    pub fn tokens(&self, p: u64) -> u64 {
        p * self.seq
    }

    /// Puzzle `p`'s puzzle identifier.
    pub fn puzzle_id(&self, p: u64) -> u64 {
        self.capacity * self.seq + p
    }

    /// Puzzle `p`'s row of the puzzle-embedding table (f32 bits).
    pub fn table_row(&self, p: u64) -> u64 {
        self.capacity * (self.seq + 1) + p * self.ndim
    }

    /// Words of `ids`.
    pub fn ids_words(&self) -> u64 {
        self.capacity * (self.seq + 1 + self.ndim)
    }

    // ---- out

    /// Puzzle `p`'s logits.
    pub fn logits(&self, p: u64) -> u64 {
        p * self.logits_words()
    }

    /// Words of one puzzle's logits.
    pub fn logits_words(&self) -> u64 {
        self.seq * self.vocab
    }

    /// The first q pair (what the heads and the halting kernel call q_base).
    pub fn q_base(&self) -> u64 {
        self.capacity * self.logits_words()
    }

    /// Puzzle `p`'s `[q_halt, q_continue]`.
    pub fn q(&self, p: u64) -> u64 {
        self.q_base() + 2 * p
    }

    /// Words of `out`.
    pub fn out_words(&self) -> u64 {
        self.capacity * (self.logits_words() + 2)
    }

    // ---- control (shaders/halt.wgsl)

    /// The running count.
    pub fn count(&self) -> u64 {
        0
    }

    /// Puzzle `p`'s ACT steps in the current run.
    pub fn steps(&self, p: u64) -> u64 {
        halt::control_header(self.slices) + p
    }

    /// Words of `control`.
    pub fn control_words(&self) -> u64 {
        halt::control_header(self.slices) + self.capacity
    }

    // ---- scratch

    /// The first word of the split partials.
    pub fn part_base(&self) -> u64 {
        self.capacity * self.work
    }

    /// The first of the kernels' [`REPORT_WORDS`] report slots: the last
    /// words of the scratch binding.
    pub fn reports(&self) -> u64 {
        (self.part_base() + self.partials).next_multiple_of(4)
    }

    /// Words of `scratch`.
    pub fn scratch_words(&self) -> u64 {
        self.reports() + REPORT_WORDS
    }

    // ---- staging

    /// Words of a staging buffer: the most one read takes (every puzzle's
    /// logits, q, ACT steps and carry).
    pub fn staging_words(&self) -> u64 {
        self.capacity * (self.logits_words() + 2 + 1 + 2 * self.sd)
    }
}

/// The dispatches of the fused schedule's network calls and of the heads
/// ([`budget`]: each within the loop budget) and their parameter blocks:
/// per slice, one block per segment of the z update, of the y update,
/// then per range of the heads' outputs.
pub(super) struct FusedBlocks {
    /// The segments of the z update's call and of the y update's
    /// (`[unit_first, unit_end)` of their units).
    pub calls: [budget::Segments; 2],
    /// The heads' output ranges.
    pub heads: Vec<[u32; 2]>,
}

impl FusedBlocks {
    /// The segments and ranges of `config` at tile depth `sk` within
    /// `loop_budget` iterations per invocation.
    pub fn new(config: &TrmConfig, sk: u32, loop_budget: u64) -> Result<Self> {
        Ok(FusedBlocks {
            calls: [
                budget::fused_segments(config, Level::L, sk, loop_budget)?,
                budget::fused_segments(config, Level::H, sk, loop_budget)?,
            ],
            heads: budget::heads_ranges(config, loop_budget)?,
        })
    }

    /// Blocks per slice.
    pub fn per_slice(&self) -> u32 {
        (self.calls[0].ranges.len() + self.calls[1].ranges.len() + self.heads.len()) as u32
    }

    /// Index of the block of segment `i` of the y update (or z update) in
    /// slice `j`.
    pub fn step(&self, j: u32, y_update: bool, i: usize) -> u32 {
        let before = if y_update {
            self.calls[0].ranges.len()
        } else {
            0
        };
        j * self.per_slice() + (before + i) as u32
    }

    /// Index of the block of the heads' range `i` in slice `j`.
    pub fn heads(&self, j: u32, i: usize) -> u32 {
        let before = self.calls[0].ranges.len() + self.calls[1].ranges.len();
        j * self.per_slice() + (before + i) as u32
    }

    /// The segments of the y update's call (or the z update's).
    pub fn segments(&self, y_update: bool) -> &[[u32; 2]] {
        &self.calls[usize::from(y_update)].ranges
    }

    /// FLOPs of the costliest segment for one puzzle.
    fn most_flops(&self) -> u64 {
        self.calls[0].most_flops.max(self.calls[1].most_flops)
    }
}

/// Device buffers of one chunk of puzzles, allocated once for `capacity`
/// puzzles and kept for later solves.
pub(super) struct Chunk {
    pub layout: ChunkLayout,
    pub capacity: usize,
    pub xyz: wgpu::Buffer,
    pub scratch: wgpu::Buffer,
    pub ids: wgpu::Buffer,
    pub active: wgpu::Buffer,
    pub out: wgpu::Buffer,
    /// Early halting on the device (`shaders/halt.wgsl`).
    pub control: wgpu::Buffer,
    pub params: wgpu::Buffer,
    /// How the fused calls and the heads are cut into dispatches, and
    /// where their parameter blocks are.
    pub fused: FusedBlocks,
    /// The fused blocks of the first slice, which the spread plan's start
    /// from.
    pub bases: [Params; 2],
    /// Puzzles per fused dispatch, and the slices a call of `capacity`
    /// puzzles takes.
    pub slice: u32,
    pub slices: u32,
    /// Host-readable copies of what is read back: two, so that one read
    /// can wait to be mapped while the next is recorded.
    pub staging: [wgpu::Buffer; 2],
    /// Host-readable copies of the running count, two so that one can wait
    /// while the next is written.
    pub count_staging: [wgpu::Buffer; 2],
    pub step_group: wgpu::BindGroup,
    pub embed_group: wgpu::BindGroup,
    pub heads_group: wgpu::BindGroup,
    pub halt_group: wgpu::BindGroup,
}

/// Puzzles per fused dispatch under `max_flops_per_dispatch`, whose
/// costliest segment takes `segment_flops` per puzzle.
fn slice_puzzles(segment_flops: u64, max_flops_per_dispatch: u64) -> u32 {
    (max_flops_per_dispatch / segment_flops.max(1)).clamp(1, u64::from(u32::MAX)) as u32
}

/// Words of scratch a chunk of `capacity` puzzles holds at tile depth `sk`.
pub(super) fn scratch_words(config: &TrmConfig, capacity: u64, sk: u32) -> u64 {
    let partials = SpreadPlan::partial_floats_up_to(config, capacity as u32, sk);
    ChunkLayout::new(config, capacity, 1, partials).scratch_words()
}

impl Chunk {
    /// Allocates the buffers of `capacity` puzzles of `model` and writes
    /// the fused schedule's parameter blocks.
    pub fn new(
        ctx: &GpuContext,
        model: &TrmModel,
        resident: &Resident,
        options: &GpuRunOptions,
        capacity: usize,
        params_stride: u32,
    ) -> Result<Self> {
        let config = model.config();
        let cap = capacity as u64;
        let sk = resident.step.pipeline.depth();
        let fused = FusedBlocks::new(config, sk, options.max_loop_iterations)?;
        let slice =
            slice_puzzles(fused.most_flops(), options.max_flops_per_dispatch).min(capacity as u32);
        let slices = (capacity as u32).div_ceil(slice);
        let partials = SpreadPlan::partial_floats_up_to(config, capacity as u32, sk);
        let l = ChunkLayout::new(config, cap, slices, partials);
        use wgpu::BufferUsages as U;
        let buffer =
            |label: &str, words: u64, usage| layout::buffer(ctx, label, words * WORD, usage);
        let xyz = buffer(
            "state x, y, z",
            l.xyz_words(),
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        )?;
        let limits = ctx.limits();
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let scratch_bytes = l.scratch_words() * WORD;
        if scratch_bytes > binding || l.scratch_words() > u64::from(u32::MAX) {
            return Err(TrmError::AdapterUnsuitable {
                adapter: ctx.adapter_info().name.clone(),
                reason: format!(
                    "{capacity} puzzles need {scratch_bytes} bytes of scratch in one buffer; the device allows {binding}"
                ),
            });
        }
        let scratch = buffer(
            "scratch",
            l.scratch_words(),
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        )?;
        debug_assert_eq!(l.ids_words(), cap * Embed::ids_words(config));
        let ids = buffer("token ids", l.ids_words(), U::STORAGE | U::COPY_DST)?;
        let active = buffer(
            "active puzzles",
            cap,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        )?;
        let out = buffer(
            "outputs",
            l.out_words(),
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        )?;
        let stride = u64::from(params_stride);
        let fused_blocks = u64::from(slices) * u64::from(fused.per_slice());
        let params = layout::buffer(
            ctx,
            "parameters",
            (fused_blocks + spread::most_blocks(config)) * stride,
            U::UNIFORM | U::COPY_DST,
        )?;
        let staging = [
            buffer("staging", l.staging_words(), U::MAP_READ | U::COPY_DST)?,
            buffer("staging", l.staging_words(), U::MAP_READ | U::COPY_DST)?,
        ];
        let control = buffer(
            "halting control",
            l.control_words(),
            U::STORAGE | U::INDIRECT | U::COPY_DST | U::COPY_SRC,
        )?;
        let count_staging = [
            layout::buffer(ctx, "running count", 16, U::MAP_READ | U::COPY_DST)?,
            layout::buffer(ctx, "running count", 16, U::MAP_READ | U::COPY_DST)?,
        ];
        let bases = update_blocks(config, &l, capacity as u32, slice, slices);
        write_fused_blocks(ctx, &params, &fused, &bases, slice, slices, params_stride)?;
        let step = &resident.step.pipeline;
        let step_group = step.bind_group(ctx, &xyz, &scratch, &active, &params)?;
        let embed_group = resident.embed.bind_group(ctx, &ids, &xyz, &params)?;
        let heads_group = resident
            .heads
            .bind_group(ctx, &xyz, &out, &active, &params)?;
        let halt_group = resident
            .halt
            .bind_group(ctx, &out, &active, &control, &params)?;
        Ok(Chunk {
            layout: l,
            capacity,
            xyz,
            scratch,
            ids,
            active,
            out,
            control,
            params,
            fused,
            bases,
            slice,
            slices,
            staging,
            count_staging,
            step_group,
            embed_group,
            heads_group,
            halt_group,
        })
    }

    /// Index of the spread plan's first parameter block (after every
    /// slice's fused blocks).
    pub fn spread_first_block(&self) -> u32 {
        self.slices * self.fused.per_slice()
    }

    /// The fused dispatches of `n` active puzzles: (slice, workgroups at
    /// most) for each slice with puzzles.
    pub fn slices_of(&self, n: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0..n.div_ceil(self.slice)).map(move |j| (j, (n - j * self.slice).min(self.slice)))
    }
}

/// The parameter blocks of the z update and the y update (the heads' too):
/// which state region each updates and which it injects, the blocks of
/// its level, and what every kernel of the chunk reads.
fn update_blocks(
    config: &TrmConfig,
    l: &ChunkLayout,
    capacity: u32,
    slice: u32,
    slices: u32,
) -> [Params; 2] {
    let common = Params {
        q_base: l.q_base() as u32,
        puzzle_stride: l.state_words() as u32,
        batch: capacity,
        slice,
        slices,
        ..Params::default()
    };
    // each update runs its level's blocks (HRM: its own network)
    let blocks = |level| {
        let layers = config.level_layers(level);
        (layers.start as u32, layers.len() as u32)
    };
    let ((l_first, l_count), (h_first, h_count)) = (blocks(Level::L), blocks(Level::H));
    let z_update = Params {
        state_base: l.state(State::Z, 0) as u32,
        inj_a_base: l.state(State::Y, 0) as u32,
        inj_b_base: l.state(State::X, 0) as u32,
        inject_sum: 1,
        layer_first: l_first,
        layer_count: l_count,
        ..common
    };
    let y_update = Params {
        state_base: l.state(State::Y, 0) as u32,
        inj_a_base: l.state(State::Z, 0) as u32,
        inj_b_base: 0,
        inject_sum: 0,
        layer_first: h_first,
        layer_count: h_count,
        ..common
    };
    [z_update, y_update]
}

/// Writes each slice's blocks: the segments of the two calls, then the
/// heads' ranges (on the y update's block: the heads read y).
fn write_fused_blocks(
    ctx: &GpuContext,
    params: &wgpu::Buffer,
    fused: &FusedBlocks,
    [z_update, y_update]: &[Params; 2],
    slice: u32,
    slices: u32,
    params_stride: u32,
) -> Result<()> {
    let stride = params_stride as usize;
    let mut blocks = vec![0u8; slices as usize * fused.per_slice() as usize * stride];
    let mut at = blocks.chunks_exact_mut(stride);
    for j in 0..slices {
        let first = j * slice;
        let calls = [
            (z_update, fused.segments(false)),
            (y_update, fused.segments(true)),
        ];
        for (base, ranges) in calls
            .into_iter()
            .chain([(y_update, fused.heads.as_slice())])
        {
            for &[unit_first, unit_end] in ranges {
                let block = Params {
                    first,
                    unit_first,
                    unit_end,
                    ..*base
                };
                let bytes = at.next().expect("a block for every segment");
                bytes[..PARAMS_BYTES as usize].copy_from_slice(bytemuck::bytes_of(&block));
            }
        }
    }
    ctx.scoped("writing the parameters", || {
        ctx.queue().write_buffer(params, 0, &blocks)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_follow_each_other_without_overlap() {
        let config = TrmConfig::sudoku_extreme();
        let l = ChunkLayout::new(&config, 5, 2, 1000);
        let sd = 97 * 512;
        assert_eq!(l.state(State::Y, 0), 6 * sd);
        assert_eq!(l.state(State::Z, 4) + sd, 3 * 6 * sd - sd);
        assert_eq!(l.puzzle_id(0), l.tokens(5));
        assert_eq!(l.table_row(0), l.puzzle_id(5));
        assert_eq!(l.table_row(5), l.ids_words());
        assert_eq!(l.q_base(), l.logits(5));
        assert_eq!(l.q(5), l.out_words());
        assert_eq!(l.steps(5), l.control_words());
        assert!(l.reports() >= l.part_base() + 1000);
        assert_eq!(l.reports() % 4, 0);
        assert_eq!(l.scratch_words(), l.reports() + REPORT_WORDS);
    }
}
