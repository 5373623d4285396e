//! Every kernel the engine builds, named by what it is built from: a
//! [`KernelKey`] holds the WGSL file, the entry point, the weight precision
//! and lane prelude (of the kernels built on the step prelude) and the
//! override constants. The key makes the source ([`KernelKey::source`]) and
//! is the context's pipeline-cache key, so a cached pipeline is always the
//! kernel its key describes. [`model_kernels`] lists every key the engine
//! builds for a model on a device, from the same functions the kernels'
//! constructors call: what the translation test compiles to every shading
//! language.

use std::hash::{Hash, Hasher};

use crate::config::{PosEncodings, TrmConfig};
use crate::weights::Precision;

use super::layout::kernel_source;
use super::step_common::{Lanes, Variants, step_source};
use super::{attention_step, mixer_step};
#[cfg(test)]
use super::{embed, halt, heads, spread, step_common};

/// A WGSL file of `shaders/` the engine builds pipelines from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KernelFile {
    /// The fused step of the MLP-mixer model (step prelude).
    MixerStep,
    /// The fused step of the attention model, and the spread schedule's
    /// RoPE and attention entry points (step prelude).
    AttentionStep,
    /// The spread schedule's phases (step prelude).
    SpreadStep,
    Embed,
    Heads,
    Halt,
    Noise,
    LoopProbe,
}

const MIXER_STEP: Variants = step_source!("mixer_step.wgsl");
const ATTENTION_STEP: Variants = step_source!("attention_step.wgsl");
const SPREAD_STEP: Variants = step_source!("spread_step.wgsl");

impl KernelFile {
    /// Every file.
    #[cfg(test)]
    pub(crate) const ALL: [KernelFile; 8] = [
        KernelFile::MixerStep,
        KernelFile::AttentionStep,
        KernelFile::SpreadStep,
        KernelFile::Embed,
        KernelFile::Heads,
        KernelFile::Halt,
        KernelFile::Noise,
        KernelFile::LoopProbe,
    ];

    /// Its name under `shaders/`.
    pub(crate) fn file_name(self) -> &'static str {
        match self {
            KernelFile::MixerStep => "mixer_step.wgsl",
            KernelFile::AttentionStep => "attention_step.wgsl",
            KernelFile::SpreadStep => "spread_step.wgsl",
            KernelFile::Embed => "embed.wgsl",
            KernelFile::Heads => "heads.wgsl",
            KernelFile::Halt => "halt.wgsl",
            KernelFile::Noise => "noise.wgsl",
            KernelFile::LoopProbe => "loop_probe.wgsl",
        }
    }

    /// Whether it follows the step prelude (`step_source!`: one source per
    /// weight precision and lane prelude); the others are one source each.
    pub(crate) fn on_step_prelude(self) -> bool {
        matches!(
            self,
            KernelFile::MixerStep | KernelFile::AttentionStep | KernelFile::SpreadStep
        )
    }

    /// Its WGSL as compiled at `precision` with `lanes` (both ignored by the
    /// files without the step prelude).
    pub(crate) fn source(self, precision: Precision, lanes: Lanes) -> &'static str {
        match self {
            KernelFile::MixerStep => MIXER_STEP.get(precision, lanes),
            KernelFile::AttentionStep => ATTENTION_STEP.get(precision, lanes),
            KernelFile::SpreadStep => SPREAD_STEP.get(precision, lanes),
            KernelFile::Embed => kernel_source!("embed.wgsl"),
            KernelFile::Heads => kernel_source!("heads.wgsl"),
            KernelFile::Halt => kernel_source!("halt.wgsl"),
            KernelFile::Noise => kernel_source!("noise.wgsl"),
            KernelFile::LoopProbe => include_str!("../../shaders/loop_probe.wgsl"),
        }
    }
}

/// What a pipeline is built from: the pipeline cache's key.
#[derive(Clone, Debug)]
pub(crate) struct KernelKey {
    pub file: KernelFile,
    pub entry: &'static str,
    /// The weight prelude (step-prelude kernels; `F32` for the others).
    pub precision: Precision,
    /// The lane prelude (step-prelude kernels; `Workgroup` for the others).
    pub lanes: Lanes,
    /// The override constants, in the order given.
    pub constants: Vec<(&'static str, f64)>,
}

impl KernelKey {
    /// A kernel of a file without the step prelude.
    pub(crate) fn plain(
        file: KernelFile,
        entry: &'static str,
        constants: Vec<(&'static str, f64)>,
    ) -> Self {
        debug_assert!(!file.on_step_prelude());
        KernelKey {
            file,
            entry,
            precision: Precision::F32,
            lanes: Lanes::Workgroup,
            constants,
        }
    }

    /// The WGSL the key's pipeline is compiled from.
    pub(crate) fn source(&self) -> &'static str {
        self.file.source(self.precision, self.lanes)
    }

    /// A name for labels and errors: `mixer_step.wgsl:main (f16, subgroups)`.
    pub(crate) fn label(&self) -> String {
        let mut label = format!("{}:{}", self.file.file_name(), self.entry);
        if self.file.on_step_prelude() {
            let lanes = match self.lanes {
                Lanes::Workgroup => "workgroup lanes",
                Lanes::Subgroup => "subgroups",
            };
            label.push_str(&format!(" ({}, {lanes})", self.precision));
        }
        label
    }

    /// What identifies the pipeline: the constants by their bits.
    fn identity(
        &self,
    ) -> (
        KernelFile,
        &'static str,
        Precision,
        Lanes,
        Vec<(&'static str, u64)>,
    ) {
        (
            self.file,
            self.entry,
            self.precision,
            self.lanes,
            self.constants
                .iter()
                .map(|&(n, v)| (n, v.to_bits()))
                .collect(),
        )
    }
}

impl PartialEq for KernelKey {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for KernelKey {}

impl Hash for KernelKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// What of a device decides a model's kernels: the tile depth, the lane
/// prelude and whether the kernels poison their workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeviceKernels {
    pub sk: u32,
    pub lanes: Lanes,
    pub poison: bool,
}

/// Every kernel the engine builds for a model of `config` at `precision` on
/// a device described by `device`: the fused step, the spread schedule's
/// phases, the embedding, the heads, the halting and noise kernels and the
/// loop probe, each key as its constructor makes it.
#[cfg(test)]
pub(crate) fn model_kernels(
    config: &TrmConfig,
    precision: Precision,
    device: DeviceKernels,
) -> Vec<KernelKey> {
    let mut keys = vec![step_common::step_key(
        config,
        precision,
        device,
        step_file(config),
    )];
    keys.extend(spread::sibling_keys(config, precision, device));
    keys.push(embed::key(config));
    keys.push(heads::key(config));
    keys.push(halt::key(config));
    keys.push(super::noise::key());
    keys.push(super::probe::key());
    keys
}

/// The fused step kernel's file for `config`'s variant.
pub(crate) fn step_file(config: &TrmConfig) -> KernelFile {
    if config.mlp_t {
        KernelFile::MixerStep
    } else {
        KernelFile::AttentionStep
    }
}

/// The step kernel's own constants besides the prelude's, by variant.
pub(crate) fn own_constants(config: &TrmConfig) -> Vec<(&'static str, f64)> {
    if config.mlp_t {
        mixer_step::own_constants(config)
    } else {
        attention_step::own_constants(config)
    }
}

/// Whether `config`'s attention uses RoPE (the spread schedule's RoPE phase).
pub(crate) fn has_rope(config: &TrmConfig) -> bool {
    !config.mlp_t && config.pos_encodings == PosEncodings::Rope
}
