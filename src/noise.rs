//! Gaussian noise for noisy trajectories (Probabilistic TRM, arXiv
//! 2605.19943): `sigma * N(0, 1)` added to the latent state before every ACT
//! step after the first, drawn from a counter-based generator so that the
//! CPU and the GPU (`shaders/noise.wgsl`) make the same numbers from
//! (seed, puzzle, trajectory, ACT step, element), with nothing uploaded.
//!
//! The generator is Philox4x32-10 (Salmon et al., SC 2011; the Random123
//! constants). Its 32-bit outputs become normals by Box-Muller, with the
//! logarithm and the sine and cosine computed by the polynomials below on
//! both sides rather than by the platform's functions: WGSL lets `cos` be
//! off by 2^-11, which would part the CPU's and the GPU's trajectories.
//! With them the two agree to a few float32 ulps.

/// Which state the noise goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NoiseOn {
    /// z_L, the latent state (the paper's choice).
    #[default]
    ZL,
    /// z_H, the answer state.
    ZH,
    /// Both, with independent draws.
    Both,
}

impl std::str::FromStr for NoiseOn {
    type Err = crate::TrmError;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "z_L" | "z_l" | "zl" => Ok(NoiseOn::ZL),
            "z_H" | "z_h" | "zh" => Ok(NoiseOn::ZH),
            "both" => Ok(NoiseOn::Both),
            other => Err(crate::TrmError::Input(format!(
                "--noise-on `{other}` (one of z_L, z_H, both)"
            ))),
        }
    }
}

/// Noisy trajectories of a solve: `sigma * N(0, 1)` added before every ACT
/// step after a puzzle's first to the states `on` names. The puzzle and
/// trajectory of a row of the batch are `row / trajectories` and `row %
/// trajectories` (a batch of each puzzle's trajectories in a row), so the
/// same seed draws the same noise on every engine, in any slot, in a
/// stream or a fixed batch. Sigma 0 is the plain solve, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseOptions {
    /// Standard deviation.
    pub sigma: f32,
    /// The generator's seed.
    pub seed: u64,
    /// Which states get it.
    pub on: NoiseOn,
    /// Trajectories per puzzle (consecutive rows of the batch).
    pub trajectories: u32,
}

impl NoiseOptions {
    /// The states the noise goes to.
    pub fn states(&self) -> &'static [State] {
        match self.on {
            NoiseOn::ZL => &[State::ZL],
            NoiseOn::ZH => &[State::ZH],
            NoiseOn::Both => &[State::ZL, State::ZH],
        }
    }

    /// The draw for batch row `row` before ACT step `step`.
    pub fn draw(&self, row: u64, step: u32) -> NoiseDraw {
        let k = u64::from(self.trajectories.max(1));
        NoiseDraw {
            seed: self.seed,
            sigma: self.sigma,
            puzzle: (row / k) as u32,
            trajectory: (row % k) as u32,
            step,
        }
    }
}

/// One (puzzle, trajectory, ACT step)'s noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseDraw {
    /// The generator's seed.
    pub seed: u64,
    /// Standard deviation.
    pub sigma: f32,
    /// The puzzle (its index in the input).
    pub puzzle: u32,
    /// The trajectory of that puzzle.
    pub trajectory: u32,
    /// The ACT step the noise comes before (from 1).
    pub step: u32,
}

/// Which of the two states a draw is for: part of the counter, so that
/// `NoiseOn::Both` draws independently for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// z_L.
    ZL = 0,
    /// z_H.
    ZH = 1,
}

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: four random words from a 128-bit counter and
/// a 64-bit key.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// A word as a uniform float in (0, 1): its top 24 bits, centred.
fn uniform(x: u32) -> f32 {
    ((x >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// ln(u) for u in (0, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)), then
/// ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, to s^11
/// (truncation below 1e-9). The same operations as `noise.wgsl`'s.
pub(crate) fn ln(u: f32) -> f32 {
    let bits = u.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    p = p * s2 + 1.0;
    2.0 * s * p + e as f32 * std::f32::consts::LN_2
}

/// (sin, cos) of 2 pi t for t in [0, 1): the nearest quarter turn taken
/// out exactly, then Taylor series on [-pi/4, pi/4] (to x^9 and x^10:
/// truncation below 4e-9).
pub(crate) fn sincos_turns(t: f32) -> (f32, f32) {
    let quarter = (t * 4.0 + 0.5).floor();
    let a = (t - quarter * 0.25) * std::f32::consts::TAU;
    let a2 = a * a;
    let mut s = -1.0 / 362_880.0 * a2 + 1.0 / 5040.0;
    s = s * a2 - 1.0 / 120.0;
    s = s * a2 + 1.0 / 6.0;
    s = a - a * a2 * s;
    let mut c = 1.0 / 3_628_800.0 * a2 - 1.0 / 40_320.0;
    c = c * a2 + 1.0 / 720.0;
    c = c * a2 - 1.0 / 24.0;
    c = c * a2 + 0.5;
    c = 1.0 - a2 * c;
    match (quarter as i32) & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// The four standard normals of counter group `group` (elements
/// `4 group .. 4 group + 4`) of one (puzzle, trajectory, ACT step, state).
pub fn normals(
    seed: u64,
    puzzle: u32,
    trajectory: u32,
    step: u32,
    state: State,
    group: u32,
) -> [f32; 4] {
    let key = [seed as u32, (seed >> 32) as u32];
    // the ACT step and the state share a word: 2^31 steps is plenty
    let counter = [group, (step << 1) | state as u32, puzzle, trajectory];
    let w = philox4x32_10(counter, key);
    let pair = |a: u32, b: u32| {
        let r = (-2.0 * ln(uniform(a))).sqrt();
        let (s, c) = sincos_turns(uniform(b));
        (r * c, r * s)
    };
    let (n0, n1) = pair(w[0], w[1]);
    let (n2, n3) = pair(w[2], w[3]);
    [n0, n1, n2, n3]
}

/// Adds `sigma * N(0, 1)` to `values`, the state of one (puzzle,
/// trajectory) (`[S, D]`, element `i` from group `i / 4`, lane `i % 4`),
/// as `noise.wgsl` does on the device.
pub fn add_noise(
    values: &mut [f32],
    sigma: f32,
    seed: u64,
    puzzle: u32,
    trajectory: u32,
    step: u32,
    state: State,
) {
    for (group, chunk) in values.chunks_mut(4).enumerate() {
        let n = normals(seed, puzzle, trajectory, step, state, group as u32);
        for (v, n) in chunk.iter_mut().zip(n) {
            *v += sigma * n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn the_polynomials_match_float64() {
        for i in 1..=4096 {
            let u = i as f32 / 4096.0 - 0.5 / 16_777_216.0;
            let want = f64::from(u).ln();
            assert!(
                (f64::from(ln(u)) - want).abs() <= 2e-7 * want.abs().max(1.0),
                "ln {u}"
            );
            let t = (i - 1) as f32 / 4096.0;
            let (s, c) = sincos_turns(t);
            let a = f64::from(t) * std::f64::consts::TAU;
            assert!((f64::from(s) - a.sin()).abs() < 3e-7, "sin at {t}");
            assert!((f64::from(c) - a.cos()).abs() < 3e-7, "cos at {t}");
        }
    }

    #[test]
    fn normals_are_standard_and_independent_across_the_counter() {
        let mut sum = 0f64;
        let mut sq = 0f64;
        let mut fourth = 0f64;
        let n = 50_000u32;
        for g in 0..n {
            for v in normals(42, 3, 1, 2, State::ZL, g) {
                let v = f64::from(v);
                sum += v;
                sq += v * v;
                fourth += v * v * v * v;
            }
        }
        let count = f64::from(4 * n);
        let mean = sum / count;
        let var = sq / count - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!(
            (fourth / count - 3.0).abs() < 0.1,
            "kurtosis {}",
            fourth / count
        );
        // every part of the counter and the key changes the draw
        let base = normals(42, 3, 1, 2, State::ZL, 0);
        for other in [
            normals(43, 3, 1, 2, State::ZL, 0),
            normals(42, 4, 1, 2, State::ZL, 0),
            normals(42, 3, 2, 2, State::ZL, 0),
            normals(42, 3, 1, 3, State::ZL, 0),
            normals(42, 3, 1, 2, State::ZH, 0),
            normals(42, 3, 1, 2, State::ZL, 1),
        ] {
            assert_ne!(base, other);
        }
    }
}
