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
