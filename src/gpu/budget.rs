//! The loop budget of a dispatch: how the engine stays right on drivers
//! that cut long loops short.
//!
//! Mesa's llvmpipe 22.3 (Debian 12's own, in lavapipe and in its GL driver
//! alike) counts the loop iterations of a shader invocation in one counter
//! shared by all its loops and, once it reaches 65535, ends every loop
//! after its current iteration (gallivm's `LP_MAX_TGSI_LOOP_ITERATIONS`).
//! Nothing reports it: the rest of the work is skipped and the dispatch
//! finishes early, with wrong results. Mesa 25's llvmpipe has no such
//! counter. Neither WGSL nor Vulkan allows the limit, but users have the
//! driver (it is what `apt-get install mesa-vulkan-drivers` gives on Debian
//! 12), and it is the kind of limit other drivers may have too (llama.cpp's
//! Vulkan backend met the same one, ggml-org/llama.cpp#13813).
//! `tests/gpu_driver.rs` holds the smallest kernel that shows it.
//!
//! One fused network call at the official Sudoku shape runs about 270 000
//! loop iterations in each invocation (the tile loops of its products), so
//! the fused schedule was wrong there. The remedy holds on every driver, not
//! only where a driver's name matches: no dispatch the engine records runs
//! more than [`LOOP_BUDGET`] loop iterations in any invocation, half that
//! limit. The counts are upper bounds of the kernels' loops, written here
//! beside each other, one function per loop nest of the WGSL it bounds:
//! - a fused network call is cut into segments of its units (each
//!   product's output tiles, the attention's tiles, RoPE), one dispatch
//!   each (`shaders/common/step_common.wgsl`, "Segments");
//! - the heads are cut into ranges of their outputs;
//! - the kernels that cannot be cut stay within the budget at every shape
//!   the engine accepts ([`check_fixed_kernels`], [`max_halt_puzzles`]).
//!
//! The cost of the remedy is dispatches: about ten per fused call at the
//! Sudoku shape, a hundred at the ARC shape, each microseconds on a GPU
//! against a call of milliseconds at the batches the fused schedule runs.

use crate::config::{Level, PosEncodings, TrmConfig};
use crate::error::{Result, TrmError};

/// Loop iterations one invocation of any dispatch may run: half the 65535
/// after which Mesa 22.3's llvmpipe ends every loop.
pub(crate) const LOOP_BUDGET: u64 = 32_768;

/// Invocations of the step kernels' workgroups (`WG` of step_common.wgsl).
const WG: u64 = 256;
/// Invocations of the heads' workgroups (`WG` of heads.wgsl).
const HEADS_WG: u64 = 64;

/// `lanes_setup` (lanes_subgroup.wgsl): its mask loop and width loop.
const LANES_SETUP: u64 = 8;

/// `row_reduce` (attention_step.wgsl): the shuffle loop (at most log2 16
/// masks) and the partials' loop (at most 16).
const ROW_REDUCE: u64 = 4 + 16;

/// One output tile of a product over a reduction of `kp` (`product_tile`
/// with what it calls, and the tile loop of `product_part` around it): the
/// B columns, the first tile load, per K step the step loop, the B loads
/// and `multiply_tile`, then `store_row`'s 4 columns for 4 rows.
fn product_tile(kp: u32, sk: u32) -> u64 {
    let (steps, sk) = (u64::from(kp.div_ceil(sk)), u64::from(sk));
    1 + sk / 4 + sk / 4 + steps * (1 + sk / 4 + sk) + 4 * 4
}

/// One tile of the attention (`attention_tile` and the loop of
/// `attention_part` around it) at state length `s`, head width `hd`: per
/// key tile the two passes over the step loop (score steps, the maxima,
/// p v steps, each loading with at most two loops of SK / 4 or the four p
/// columns and one of SK / 4, and multiplying over at most SK), a row
/// reduction; then the row sums' reduction and the 4 x 4 stores.
fn attention_tile(s: u32, hd: u32, sk: u32) -> u64 {
    let key_tiles = u64::from(s.div_ceil(64));
    let score_steps = u64::from(hd.div_ceil(sk));
    let pv_steps = u64::from(64u32.div_ceil(sk));
    let sk = u64::from(sk);
    let step = 1 + (2 * (sk / 4)).max(4 + sk / 4) + sk;
    let key_tile = 1 + 2 + (score_steps + 2 + pv_steps) * step + ROW_REDUCE;
    1 + key_tiles * key_tile + ROW_REDUCE + 4 * (1 + 4)
}

/// `inject` (step_common.wgsl), or any loop over one puzzle's S x D
/// elements strided over a workgroup (`rope`, the embedding).
fn per_element(s: u32, d: u32) -> u64 {
    (u64::from(s) * u64::from(d)).div_ceil(WG)
}

/// The MLP-mixer's norm over S (mixer_step.wgsl): per column d of the
/// invocation, two loops over S.
fn norm_over_s(s: u32, d: u32) -> u64 {
    u64::from(d).div_ceil(WG) * (1 + 2 * u64::from(s))
}

/// `rms_norm_rows` (step_common.wgsl): per pass of 64 rows, two loops over
/// a quarter of D and the lane sum's.
fn norm_rows(s: u32, d: u32) -> u64 {
    u64::from(s.div_ceil(64)) * (1 + 2 * u64::from(d.div_ceil(4)) + 2)
}

/// One phase of a fused network call as the kernel walks it: `units`
/// units alike (output tiles of a product, tiles of the attention, RoPE),
/// each `cost` loop iterations and `flops` FLOPs, then `tail` iterations
/// after the last one (the norm that follows a product), run by the
/// segment that holds the last unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phase {
    units: u32,
    cost: u64,
    flops: u64,
    tail: u64,
}

impl Phase {
    /// The output tiles of a product out[m, n] (+)= W[m, k] @ B over a
    /// reduction padded to `kp`, gated (`paired`: 32 outputs of 64 weight
    /// rows a tile) or not, with `tail` after it.
    fn product(m: u32, n: u32, kp: u32, paired: bool, sk: u32, tail: u64) -> Phase {
        let rows = if paired { 32 } else { 64 };
        Phase {
            units: m.div_ceil(rows) * n.div_ceil(64),
            cost: product_tile(kp, sk),
            flops: 2 * 64 * 64 * u64::from(kp),
            tail,
        }
    }
}

/// The phases of one fused network call of `level` (its blocks, from
/// [`TrmConfig::level_layers`]) in the order `main` of mixer_step.wgsl or
/// attention_step.wgsl walks them.
fn fused_phases(config: &TrmConfig, level: Level, sk: u32) -> Vec<Phase> {
    let (s, d) = (config.state_len() as u32, config.hidden_size as u32);
    let dp = d.next_multiple_of(4);
    let ci = config.channel_inter() as u32;
    let mut phases = Vec::new();
    for _ in config.level_layers(level) {
        let channel = [
            Phase::product(ci, s, dp, true, sk, 0),
            Phase::product(d, s, ci, false, sk, norm_rows(s, d)),
        ];
        if config.mlp_t {
            let ti = config.token_inter() as u32;
            phases.push(Phase::product(ti, d, s.next_multiple_of(4), true, sk, 0));
            phases.push(Phase::product(s, d, ti, false, sk, norm_over_s(s, d)));
        } else {
            let (heads, hd) = (config.num_heads as u32, config.head_dim() as u32);
            phases.push(Phase::product(3 * d, s, dp, false, sk, 0));
            if config.pos_encodings == PosEncodings::Rope {
                phases.push(Phase {
                    units: 1,
                    cost: per_element(s, d),
                    flops: 0,
                    tail: 0,
                });
            }
            phases.push(Phase {
                units: heads * s.div_ceil(64) * hd.div_ceil(64),
                cost: attention_tile(s, hd, sk),
                // scores and p v over every key tile, padding included
                flops: 4 * 64 * 64 * u64::from(s.next_multiple_of(64)),
                tail: 0,
            });
            phases.push(Phase::product(d, s, dp, false, sk, norm_rows(s, d)));
        }
        phases.extend(channel);
    }
    phases
}

/// A fused network call cut into dispatches: each runs the units
/// `[first, end)` of the call (`Params::unit_first`, `unit_end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Segments {
    pub ranges: Vec<[u32; 2]>,
    /// FLOPs of the costliest segment for one puzzle.
    pub most_flops: u64,
}

/// Cuts `phases` into segments of at most `budget` loop iterations per
/// invocation, each also paying `fixed` (what every dispatch of the kernel
/// runs whatever its units), the first `first` more (the injection).
/// Fails where one unit alone exceeds the budget: a shape beyond what the
/// kernel can run on every driver.
fn cut(phases: &[Phase], fixed: u64, first: u64, budget: u64, what: &str) -> Result<Segments> {
    let mut ranges = Vec::new();
    let (mut start, mut unit) = (0u32, 0u32);
    let (mut cost, mut flops, mut most_flops) = (fixed + first, 0u64, 0u64);
    for phase in phases {
        for i in 0..phase.units {
            let mut c = phase.cost;
            if i + 1 == phase.units {
                c += phase.tail;
            }
            if cost + c > budget && unit > start {
                ranges.push([start, unit]);
                most_flops = most_flops.max(flops);
                (start, cost, flops) = (unit, fixed, 0);
            }
            if cost + c > budget {
                return Err(TrmError::TooLarge(format!(
                    "{what}: one unit of work runs {} loop iterations in an invocation, more than \
                     the {budget} that every driver runs right (a smaller model, or the spread schedule)",
                    cost + c
                )));
            }
            cost += c;
            flops += phase.flops;
            unit += 1;
        }
    }
    if unit > start || ranges.is_empty() {
        ranges.push([start, unit]);
        most_flops = most_flops.max(flops);
    }
    Ok(Segments { ranges, most_flops })
}

/// The segments of a fused network call of `level` at tile depth `sk`,
/// within `budget` loop iterations per invocation.
pub(crate) fn fused_segments(
    config: &TrmConfig,
    level: Level,
    sk: u32,
    budget: u64,
) -> Result<Segments> {
    let (s, d) = (config.state_len() as u32, config.hidden_size as u32);
    let layers = config.level_layers(level).len() as u64;
    // the setup, and the layer and phase loops that every dispatch walks
    let fixed = LANES_SETUP + layers * (1 + 4);
    let what = format!("the fused network call ({})", level_name(level));
    cut(
        &fused_phases(config, level, sk),
        fixed,
        per_element(s, d),
        budget,
        &what,
    )
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::L => "z update",
        Level::H => "y update",
    }
}

/// The heads' outputs (`SEQ VOCAB` logits and the two q values) cut into
/// ranges of at most `budget` loop iterations per invocation: each of the
/// 64 invocations computes every 64th output of its range, a loop over D
/// each.
pub(crate) fn heads_ranges(config: &TrmConfig, budget: u64) -> Result<Vec<[u32; 2]>> {
    let outputs = (config.seq_len * config.vocab_size + 2) as u32;
    let per_output = 1 + config.hidden_size as u64;
    let per_invocation = budget.saturating_sub(1) / per_output;
    if per_invocation == 0 {
        return Err(TrmError::TooLarge(format!(
            "the heads: one output runs {per_output} loop iterations, more than the {budget} \
             that every driver runs right"
        )));
    }
    let range = (per_invocation * HEADS_WG).min(u64::from(u32::MAX)) as u32;
    Ok((0..outputs.div_ceil(range))
        .map(|i| [i * range, ((i + 1) * range).min(outputs)])
        .collect())
}

/// `spread_norm_rows` (spread_step.wgsl): the setup, two loops over a
/// row's D elements strided over the workgroup (the first adding each of
/// `splits` partials), and the cluster sums (at most WG / 8) or the tree.
fn spread_norm_rows(d: u32, splits: u64) -> u64 {
    LANES_SETUP + u64::from(d).div_ceil(WG) * (2 + splits) + WG / 8
}

/// `spread_norm_cols` (spread_step.wgsl): two loops over a column's S
/// elements, 8 lanes apart (the first adding each of `splits` partials),
/// and the 8 lanes' partials.
fn spread_norm_cols(s: u32, splits: u64) -> u64 {
    u64::from(s).div_ceil(8) * (2 + splits) + 8
}

/// Checks the kernels whose dispatches are not cut: the embedding (a loop
/// over one puzzle's S x D elements) and the spread schedule's phases: one
/// product tile over at most the whole reduction, the norms after split
/// products (at most one split per 64 of the reduction: src/gpu/spread.rs),
/// one attention tile, RoPE's elements.
pub(crate) fn check_fixed_kernels(config: &TrmConfig, sk: u32, budget: u64) -> Result<()> {
    let (s, d) = (config.state_len() as u32, config.hidden_size as u32);
    let ci = config.channel_inter() as u32;
    let splits = |k: u32| u64::from(k.div_ceil(64));
    let mut costs = vec![
        ("the embedding", per_element(s, d)),
        (
            "a channel product tile",
            LANES_SETUP + product_tile(ci.max(d), sk),
        ),
        (
            "the spread norm over D",
            spread_norm_rows(d, splits(ci.max(d))),
        ),
    ];
    if config.mlp_t {
        let ti = config.token_inter() as u32;
        costs.push(("a token product tile", product_tile(ti.max(s), sk)));
        costs.push(("the spread norm over S", spread_norm_cols(s, splits(ti))));
    } else {
        let hd = config.head_dim() as u32;
        costs.push(("an attention tile", LANES_SETUP + attention_tile(s, hd, sk)));
    }
    match costs.into_iter().find(|&(_, cost)| cost > budget) {
        Some((what, cost)) => Err(TrmError::TooLarge(format!(
            "{what} of this model runs {cost} loop iterations in an invocation, more than the \
             {budget} that every driver runs right"
        ))),
        None => Ok(()),
    }
}

/// The most puzzles a chunk may hold for the halting kernel, which walks
/// the running list in one invocation (two loops over the puzzles and one
/// over the slices, at most one a puzzle).
pub(crate) fn max_halt_puzzles(budget: u64) -> usize {
    (budget.saturating_sub(8) / 3) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> TrmConfig {
        TrmConfig::from_json(json).unwrap()
    }

    /// The shapes of the published models, both variants.
    fn published() -> Vec<(&'static str, TrmConfig)> {
        let arc = config(
            r#"{"seq_len": 900, "vocab_size": 12, "num_puzzle_identifiers": 1000,
                "hidden_size": 512, "expansion": 4, "num_heads": 8, "H_cycles": 3,
                "L_cycles": 4, "L_layers": 2, "halt_max_steps": 16, "mlp_t": false,
                "pos_encodings": "rope", "puzzle_emb_ndim": 512, "puzzle_emb_len": 16}"#,
        );
        let mut sudoku_attention = TrmConfig::sudoku_extreme();
        sudoku_attention.mlp_t = false;
        sudoku_attention.num_heads = 8;
        sudoku_attention.pos_encodings = PosEncodings::Rope;
        vec![
            ("sudoku", TrmConfig::sudoku_extreme()),
            ("sudoku attention", sudoku_attention),
            ("arc", arc),
        ]
    }

    #[test]
    fn segments_cover_every_unit_once_in_order() {
        for (name, config) in published() {
            for sk in [8, 16] {
                let phases = fused_phases(&config, Level::L, sk);
                let units: u32 = phases.iter().map(|p| p.units).sum();
                let segments = fused_segments(&config, Level::L, sk, LOOP_BUDGET).unwrap();
                let mut next = 0;
                for [first, end] in &segments.ranges {
                    assert_eq!(*first, next, "{name}");
                    assert!(end > first, "{name}: an empty segment");
                    next = *end;
                }
                assert_eq!(next, units, "{name} at SK {sk}");
            }
        }
    }

    /// Each unit's loop iterations, its phase's tail on the last.
    fn unit_costs(config: &TrmConfig, sk: u32) -> Vec<u64> {
        fused_phases(config, Level::L, sk)
            .iter()
            .flat_map(|p| {
                (0..p.units).map(move |i| p.cost + if i + 1 == p.units { p.tail } else { 0 })
            })
            .collect()
    }

    #[test]
    fn segments_stay_within_the_budget_and_are_as_long_as_it_allows() {
        for (name, config) in published() {
            let costs = unit_costs(&config, 16);
            let total: u64 = costs.iter().sum();
            // a whole call is far beyond the budget at these shapes: the
            // case the driver got wrong
            assert!(total > 4 * LOOP_BUDGET, "{name}: {total}");
            let fixed = LANES_SETUP + 5 * config.l_layers as u64;
            let inject = per_element(config.state_len() as u32, config.hidden_size as u32);
            let most = *costs.iter().max().unwrap();
            for budget in [fixed + inject + most, 2 * most, 10 * most, LOOP_BUDGET] {
                let segments = fused_segments(&config, Level::L, 16, budget).unwrap();
                for (i, &[first, end]) in segments.ranges.iter().enumerate() {
                    let start = if i == 0 { fixed + inject } else { fixed };
                    let cost = start + costs[first as usize..end as usize].iter().sum::<u64>();
                    assert!(
                        cost <= budget,
                        "{name}: segment {i} costs {cost} of {budget}"
                    );
                    if let Some(&next) = costs.get(end as usize) {
                        assert!(
                            cost + next > budget,
                            "{name}: segment {i} could hold one more"
                        );
                    }
                }
            }
            // one unit beyond the budget is refused, not run wrong
            let at_least = fixed + inject + costs[0];
            assert!(
                fused_segments(&config, Level::L, 16, at_least - 1).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn sudoku_costs_are_those_the_kernel_header_counts() {
        // a tile over K = 512 at SK 16: 32 steps of 21 iterations
        assert_eq!(product_tile(512, 16), 1 + 4 + 4 + 32 * 21 + 16);
        let config = TrmConfig::sudoku_extreme();
        let phases = fused_phases(&config, Level::L, 16);
        let tiles: Vec<u32> = phases.iter().map(|p| p.units).collect();
        // token gate/up 16 x 8, token down 2 x 8, channel gate/up 48 x 2,
        // channel down 8 x 2, per block
        assert_eq!(tiles, [128, 16, 96, 16, 128, 16, 96, 16]);
        let flops: u64 = phases.iter().map(|p| u64::from(p.units) * p.flops).sum();
        // the products' padded FLOPs, within 30% of the call's exact ones
        let exact = config.flops_per_net_call(Level::L);
        assert!(flops >= exact && flops < exact * 13 / 10, "{flops} {exact}");
    }

    #[test]
    fn heads_ranges_cover_the_outputs() {
        for (name, config) in published() {
            let ranges = heads_ranges(&config, LOOP_BUDGET).unwrap();
            let outputs = (config.seq_len * config.vocab_size + 2) as u32;
            assert_eq!(ranges.first().unwrap()[0], 0, "{name}");
            assert_eq!(ranges.last().unwrap()[1], outputs, "{name}");
            for pair in ranges.windows(2) {
                assert_eq!(pair[0][1], pair[1][0]);
            }
            for [first, end] in ranges {
                let per_invocation = u64::from(end - first).div_ceil(HEADS_WG);
                assert!(per_invocation * (1 + config.hidden_size as u64) < LOOP_BUDGET);
            }
            check_fixed_kernels(&config, 16, LOOP_BUDGET).unwrap();
            check_fixed_kernels(&config, 8, LOOP_BUDGET).unwrap();
        }
        let arc = &published()[2].1;
        assert_eq!(heads_ranges(arc, LOOP_BUDGET).unwrap().len(), 3);
    }
}
