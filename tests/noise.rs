//! Noisy trajectories' noise: the device's kernel (`shaders/noise.wgsl`)
//! makes the CPU's numbers (`trm_wgpu::noise`) from the same (seed,
//! puzzle, trajectory, ACT step, element), touching nothing outside its
//! rows, and sigma = 0 changes nothing.

mod common;

use trm_wgpu::gpu::noise::{NoiseDispatch, add_noise_on_device};
use trm_wgpu::noise::{State, add_noise};
use trm_wgpu::rng::SplitMix64;

#[test]
fn the_device_draws_the_cpus_noise() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    let seed = common::test_seed();
    let mut rng = SplitMix64::new(seed);
    // odd sizes: a row of S x D = 97 x 13 (not a multiple of 4), 7 rows of
    // 3 trajectories from global row 5, after 11 floats of something else
    let (row_elems, rows, first_row, trajectories, base) = (97 * 13, 7u32, 5u32, 3u32, 11u32);
    let total = base as usize + rows as usize * row_elems as usize + 9;
    let values: Vec<f32> = (0..total).map(|_| rng.normal() as f32).collect();
    for (state, step, sigma) in [(State::ZL, 2, 0.7f32), (State::ZH, 15, 1.5)] {
        let dispatch = NoiseDispatch {
            seed: seed ^ 0xdead_beef_0000_0001,
            sigma,
            step,
            state,
            first_row,
            trajectories,
            row_elems,
            rows,
            base,
        };
        let gpu = add_noise_on_device(&ctx, &values, &dispatch).unwrap();
        let mut cpu = values.clone();
        for r in 0..rows {
            let g = first_row + r;
            let start = (base + r * row_elems) as usize;
            add_noise(
                &mut cpu[start..start + row_elems as usize],
                sigma,
                dispatch.seed,
                g / trajectories,
                g % trajectories,
                step,
                state,
            );
        }
        let (mut worst, mut at) = (0f32, 0);
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            let d = (g - c).abs();
            if d > worst {
                (worst, at) = (d, i);
            }
        }
        assert!(
            worst <= 2e-6 * sigma.max(1.0),
            "{state:?}: the device differs by {worst} at element {at} ({} vs {})",
            gpu[at],
            cpu[at]
        );
        assert_eq!(
            &gpu[..base as usize],
            &values[..base as usize],
            "before the rows"
        );
        let end = (base + rows * row_elems) as usize;
        assert_eq!(&gpu[end..], &values[end..], "after the rows");
        assert_ne!(gpu, values);

        let zero = add_noise_on_device(
            &ctx,
            &values,
            &NoiseDispatch {
                sigma: 0.0,
                ..dispatch
            },
        )
        .unwrap();
        assert_eq!(zero, values, "sigma 0 is no noise, bit for bit");
    }
}

use common::gpu_checks::{RandomModel, random_batch};
use trm_wgpu::augment::{AugmentTask, Selection, solve_variants};
use trm_wgpu::noise::{NoiseOn, NoiseOptions};
use trm_wgpu::{CpuEngine, Engine, PosEncodings, SolveOptions};

fn small_model(seed: u64, heads: Option<usize>) -> RandomModel {
    RandomModel {
        seed,
        seq_len: 9,
        hidden: 16,
        heads,
        layers: 1,
        batch: 2,
        expansion: 2.0,
        h_cycles: 1,
        l_cycles: 2,
        puzzle_emb_ndim: 16,
        puzzle_ids: 3,
        pos: PosEncodings::Rope,
        act_steps: 3,
    }
}

fn noisy(sigma: f32, on: NoiseOn, trajectories: u32, seed: u64) -> SolveOptions {
    SolveOptions::default().carry(false).noise(NoiseOptions {
        sigma,
        seed,
        on,
        trajectories,
    })
}

#[test]
fn sigma_zero_is_the_plain_solve_bit_for_bit() {
    let seed = common::test_seed();
    let spec = small_model(seed, Some(2));
    let model = std::sync::Arc::new(spec.model());
    let batch = random_batch(model.config(), 3, seed);
    let mut engine = CpuEngine::with_threads(model, 2).unwrap();
    let plain = engine
        .solve(&batch, &SolveOptions::default().carry(false))
        .unwrap();
    let zero = engine
        .solve(&batch, &noisy(0.0, NoiseOn::Both, 1, seed))
        .unwrap();
    assert_eq!(zero, plain);
    // K trajectories of no noise: every one the plain answer, the first chosen
    let three = solve_variants(
        &mut engine,
        &batch,
        &noisy(0.0, NoiseOn::ZL, 3, seed),
        AugmentTask::Sudoku,
        1,
        0,
    )
    .unwrap()
    .select(Selection::QHalt)
    .unwrap();
    assert_eq!(three.output.logits, plain.logits);
    assert_eq!(three.selected, vec![0; 3]);
    assert_eq!(three.agreement, vec![1.0; 3]);
}

#[test]
fn cpu_and_gpu_trajectories_agree() {
    let Some(context) = common::gpu::context() else {
        return;
    };
    let seed = common::test_seed();
    for (heads, on) in [(Some(2), NoiseOn::ZL), (None, NoiseOn::Both)] {
        let spec = RandomModel {
            seq_len: if heads.is_some() { 9 } else { 8 },
            ..small_model(seed, heads)
        };
        let model = spec.model();
        let batch = random_batch(model.config(), 2, seed);
        let options = noisy(0.5, on, 3, seed ^ 7);
        let mut cpu = CpuEngine::with_threads(std::sync::Arc::new(model.clone()), 2).unwrap();
        let mut gpu = common::gpu::engine_on(&context, &model);
        let c = solve_variants(&mut cpu, &batch, &options, AugmentTask::Sudoku, 1, 0).unwrap();
        let g = solve_variants(&mut gpu, &batch, &options, AugmentTask::Sudoku, 1, 0).unwrap();
        let (c, g) = (c.variant_output(), g.variant_output());
        common::assert_close("noisy logits", &g.logits, &c.logits, 1e-5, 1e-5);
        common::assert_close(
            "noisy q_halt",
            &g.q_halt_logits,
            &c.q_halt_logits,
            1e-5,
            1e-5,
        );
        // sigma 0 on the GPU: its plain solve, bit for bit
        let plain_gpu = gpu
            .solve(&batch, &SolveOptions::default().carry(false))
            .unwrap();
        let zero_gpu = gpu.solve(&batch, &noisy(0.0, on, 1, seed)).unwrap();
        assert_eq!(zero_gpu.logits, plain_gpu.logits);
        // the noise moved the trajectories apart
        let row = c.seq_len * c.vocab_size;
        assert_ne!(c.logits[..row], c.logits[row..2 * row], "{on:?}");
        let plain = cpu
            .solve(&batch, &SolveOptions::default().carry(false))
            .unwrap();
        assert_ne!(c.logits[..row], plain.logits[..row]);
    }
}
