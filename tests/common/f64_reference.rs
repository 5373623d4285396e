//! An independent float64 implementation of TRM inference (and of HRM's,
//! which differs in the network of the z_H update and in the halting rule),
//! written from `shared/TRM.md` with plain loops (no GEMM crate, no code
//! shared with the engines), to judge every engine on fresh random models.
#![allow(dead_code)]

use trm_wgpu::model::TokenMixer;
use trm_wgpu::{Arch, PosEncodings, PuzzleBatch, TrmModel};

/// `[rows, cols]` row-major f64 matrix.
#[derive(Clone)]
struct M {
    rows: usize,
    cols: usize,
    v: Vec<f64>,
}

impl M {
    fn zeros(rows: usize, cols: usize) -> M {
        M {
            rows,
            cols,
            v: vec![0.0; rows * cols],
        }
    }
    fn from(data: &[f32], rows: usize, cols: usize) -> M {
        assert_eq!(data.len(), rows * cols);
        M {
            rows,
            cols,
            v: data.iter().map(|&x| x as f64).collect(),
        }
    }
    fn at(&self, r: usize, c: usize) -> f64 {
        self.v[r * self.cols + c]
    }
    fn transpose(&self) -> M {
        let mut t = M::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.v[c * self.rows + r] = self.at(r, c);
            }
        }
        t
    }
    /// `self @ w^T` for a linear weight `w: [out, in]`.
    fn linear(&self, w: &M) -> M {
        assert_eq!(self.cols, w.cols);
        let mut o = M::zeros(self.rows, w.rows);
        for r in 0..self.rows {
            for j in 0..w.rows {
                let mut acc = 0.0;
                for k in 0..self.cols {
                    acc += self.at(r, k) * w.at(j, k);
                }
                o.v[r * w.rows + j] = acc;
            }
        }
        o
    }
    fn add(&self, other: &M) -> M {
        M {
            rows: self.rows,
            cols: self.cols,
            v: self.v.iter().zip(&other.v).map(|(a, b)| a + b).collect(),
        }
    }
}

/// `v / sqrt(mean(v^2) + eps)` over the last axis.
fn rms_norm(x: &M, eps: f64) -> M {
    let mut o = x.clone();
    for r in 0..x.rows {
        let row = &mut o.v[r * x.cols..(r + 1) * x.cols];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / x.cols as f64;
        let scale = 1.0 / (ms + eps).sqrt();
        row.iter_mut().for_each(|v| *v *= scale);
    }
    o
}

fn silu(a: f64) -> f64 {
    a / (1.0 + (-a).exp())
}

/// `down(silu(g) * u)`, `[g | u] = gate_up(v)`.
fn swiglu(x: &M, gate_up: &M, down: &M) -> M {
    let gu = x.linear(gate_up);
    let inter = gate_up.rows / 2;
    let mut a = M::zeros(x.rows, inter);
    for r in 0..x.rows {
        for j in 0..inter {
            a.v[r * inter + j] = silu(gu.at(r, j)) * gu.at(r, inter + j);
        }
    }
    a.linear(down)
}

struct Ref<'a> {
    model: &'a TrmModel,
    cos: Vec<f64>,
    sin: Vec<f64>,
}

impl Ref<'_> {
    fn attention(&self, h: &M, qkv_w: &M, o_w: &M) -> M {
        let c = self.model.config();
        let (s, d, heads, hd) = (c.state_len(), c.hidden_size, c.num_heads, c.head_dim());
        let mut qkv = h.linear(qkv_w); // [S, 3D]
        if c.pos_encodings == PosEncodings::Rope {
            let half = hd / 2;
            for pos in 0..s {
                for head in 0..2 * heads {
                    let base = pos * 3 * d + head * hd;
                    let x: Vec<f64> = qkv.v[base..base + hd].to_vec();
                    for j in 0..hd {
                        let rot = if j < half { -x[j + half] } else { x[j - half] };
                        qkv.v[base + j] =
                            x[j] * self.cos[pos * hd + j] + rot * self.sin[pos * hd + j];
                    }
                }
            }
        }
        let mut out = M::zeros(s, d);
        let scale = 1.0 / (hd as f64).sqrt();
        for head in 0..heads {
            for i in 0..s {
                let mut w = vec![0.0; s];
                for (j, wj) in w.iter_mut().enumerate() {
                    let mut dot = 0.0;
                    for t in 0..hd {
                        dot += qkv.at(i, head * hd + t) * qkv.at(j, d + head * hd + t);
                    }
                    *wj = dot * scale;
                }
                let max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = w.iter().map(|v| (v - max).exp()).sum();
                for t in 0..hd {
                    let mut acc = 0.0;
                    for (j, wj) in w.iter().enumerate() {
                        acc += (wj - max).exp() / sum * qkv.at(j, 2 * d + head * hd + t);
                    }
                    out.v[i * d + head * hd + t] = acc;
                }
            }
        }
        out.linear(o_w)
    }

    /// `net(h, injection) = block_{L-1}( ... block_0(h + injection))`, with
    /// TRM's one network (`answer` either way), or HRM's L level
    /// (`inner.L_level`, the first L_layers stored blocks) or, for the
    /// answer, its H level (the H_layers blocks after them).
    fn net(&self, h: &M, injection: &M, answer: bool) -> M {
        let c = self.model.config();
        let eps = c.rms_norm_eps;
        let (s, d) = (c.state_len(), c.hidden_size);
        let layers = &self.model.weights().layers;
        let layers = if c.arch == Arch::Hrm && answer {
            &layers[c.l_layers..c.l_layers + c.h_layers]
        } else {
            &layers[..c.l_layers]
        };
        let mut h = h.add(injection);
        for layer in layers {
            h = match &layer.mixer {
                TokenMixer::Mlp { gate_up, down } => {
                    let ti = c.token_inter();
                    let t = h.transpose(); // [D, S]
                    let t = rms_norm(
                        &t.add(&swiglu(
                            &t,
                            &M::from(&gate_up.to_f32(), 2 * ti, s),
                            &M::from(&down.to_f32(), s, ti),
                        )),
                        eps,
                    );
                    t.transpose()
                }
                TokenMixer::Attention { qkv, o_proj } => {
                    let a = self.attention(
                        &h,
                        &M::from(&qkv.to_f32(), 3 * d, d),
                        &M::from(&o_proj.to_f32(), d, d),
                    );
                    rms_norm(&h.add(&a), eps)
                }
            };
            let ci = c.channel_inter();
            let mlp = swiglu(
                &h,
                &M::from(&layer.gate_up.to_f32(), 2 * ci, d),
                &M::from(&layer.down.to_f32(), d, ci),
            );
            h = rms_norm(&h.add(&mlp), eps);
        }
        h
    }

    fn embed(&self, tokens: &[u32], pid: u32) -> M {
        let c = self.model.config();
        let w = self.model.weights();
        let (s, d) = (c.state_len(), c.hidden_size);
        let p = c.puzzle_emb_positions();
        let mut e = M::zeros(s, d);
        if let Some(table) = &w.puzzle_emb {
            // one row: the table may be a 2.5 GB mapping
            let mut row = vec![0.0f32; c.puzzle_emb_ndim];
            table.row_into(pid as usize, &mut row);
            for (k, v) in row.iter().enumerate() {
                e.v[k] = *v as f64;
            }
        }
        let mut row = vec![0.0f32; d];
        for (i, &t) in tokens.iter().enumerate() {
            w.embed_tokens.row_into(t as usize, &mut row);
            for (k, v) in row.iter().enumerate() {
                e.v[(p + i) * d + k] = *v as f64;
            }
        }
        if let Some(pos) = w.embed_pos.as_ref().map(|m| m.to_f32()) {
            // the authors' literal, kept as written
            #[allow(clippy::approx_constant)]
            for (v, &q) in e.v.iter_mut().zip(&pos) {
                *v = 0.707106781 * (*v + q as f64);
            }
        }
        let scale = (d as f64).sqrt();
        e.v.iter_mut().for_each(|v| *v *= scale);
        e
    }
}

/// Outputs of [`solve`], as f32 for comparison with the engines.
pub struct RefOutput {
    pub logits: Vec<f32>,
    pub q_halt_logits: Vec<f32>,
    pub q_continue_logits: Vec<f32>,
    pub z_h: Vec<f32>,
    pub z_l: Vec<f32>,
    pub steps: Vec<u32>,
}

/// The whole solve of TRM.md in float64: `act_steps` ACT steps per puzzle,
/// or fewer with early halting (stop after the first step with q_halt > 0,
/// HRM's q_halt > q_continue).
pub fn solve(
    model: &TrmModel,
    batch: &PuzzleBatch,
    act_steps: usize,
    early_halt: bool,
) -> RefOutput {
    let c = model.config();
    let w = model.weights();
    let (s, d, hd) = (c.state_len(), c.hidden_size, c.head_dim());
    // RoPE tables as the authors' RotaryEmbedding buffer (float32 angles).
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    if !c.mlp_t && c.pos_encodings == PosEncodings::Rope {
        let half = hd / 2;
        for pos in 0..s {
            for j in 0..hd {
                let jj = j % half;
                let inv = (1.0
                    / (c.rope_theta as f32 as f64).powf((2 * jj) as f32 as f64 / hd as f64))
                    as f32;
                let angle = (pos as f32 * inv) as f64;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let r = Ref { model, cos, sin };
    let lm_head = M::from(&w.lm_head.to_f32(), c.vocab_size, d);
    let mut out = RefOutput {
        logits: vec![],
        q_halt_logits: vec![],
        q_continue_logits: vec![],
        z_h: vec![],
        z_l: vec![],
        steps: vec![],
    };
    for b in 0..batch.len() {
        let x = r.embed(batch.puzzle_tokens(b), batch.puzzle_ids()[b]);
        let mut y = M::zeros(s, d);
        let mut z = M::zeros(s, d);
        for row in 0..s {
            for k in 0..d {
                y.v[row * d + k] = w.h_init[k] as f64;
                z.v[row * d + k] = w.l_init[k] as f64;
            }
        }
        let (mut logits, mut qh, mut qc, mut steps) = (M::zeros(0, 0), 0.0, 0.0, 0);
        for step in 1..=act_steps {
            for _ in 0..c.h_cycles {
                let injection = y.add(&x);
                for _ in 0..c.l_cycles {
                    z = r.net(&z, &injection, false);
                }
                y = r.net(&y, &z, true);
            }
            let seq = M {
                rows: c.seq_len,
                cols: d,
                v: y.v[c.puzzle_emb_positions() * d..].to_vec(),
            };
            logits = seq.linear(&lm_head);
            let q_head = w.q_head_weight.to_f32();
            let q = |row: usize| -> f64 {
                (0..d)
                    .map(|k| y.v[k] * q_head[row * d + k] as f64)
                    .sum::<f64>()
                    + w.q_head_bias[row] as f64
            };
            qh = q(0);
            qc = q(1);
            steps = step;
            // HRM was trained to halt on q_halt > q_continue, TRM on q_halt > 0
            let halts = match c.arch {
                Arch::Trm => qh > 0.0,
                Arch::Hrm => qh > qc,
            };
            if early_halt && halts {
                break;
            }
        }
        out.logits.extend(logits.v.iter().map(|&v| v as f32));
        out.q_halt_logits.push(qh as f32);
        out.q_continue_logits.push(qc as f32);
        out.z_h.extend(y.v.iter().map(|&v| v as f32));
        out.z_l.extend(z.v.iter().map(|&v| v as f32));
        out.steps.push(steps as u32);
    }
    out
}
