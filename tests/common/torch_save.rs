//! Writes state dicts the way `torch.save` does (a zip archive of stored
//! entries; `data.pkl`, a protocol-2 pickle whose tensors name their
//! storages by persistent ids; `data/KEY`, the storages), for tests and fuzz
//! seeds, and lets tests write the pickles `torch.save` never would.

use std::io::{Cursor, Write};

use trm_wgpu::TrmModel;
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

/// The prefix official checkpoints give every name.
pub const OFFICIAL_PREFIX: &str = "_orig_mod.model.";

/// A tensor as the pickle describes it: its storage (class, key, element
/// count) and the view (offset, shape, stride).
#[derive(Clone, Debug)]
pub struct PickleTensor {
    pub name: String,
    pub storage_class: String,
    pub key: String,
    pub numel: u64,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

impl PickleTensor {
    /// A contiguous tensor that fills its storage.
    pub fn contiguous(name: &str, storage_class: &str, key: &str, shape: &[usize]) -> Self {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut stride = vec![1u64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        PickleTensor {
            name: name.into(),
            storage_class: storage_class.into(),
            key: key.into(),
            numel: shape.iter().product(),
            offset: 0,
            shape,
            stride,
        }
    }
}

/// Writes pickle opcodes. Globals and strings are memoized and fetched
/// back with BINGET when repeated, and tuples memoized, as Python's pickler
/// does in `torch.save`.
pub struct Pickler {
    pub out: Vec<u8>,
    memo: std::collections::HashMap<String, u32>,
}

impl Default for Pickler {
    fn default() -> Self {
        Self::new()
    }
}

impl Pickler {
    /// Starts a protocol-2 pickle.
    pub fn new() -> Self {
        Pickler {
            out: vec![0x80, 2],
            memo: Default::default(),
        }
    }

    pub fn op(&mut self, op: u8) -> &mut Self {
        self.out.push(op);
        self
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// BINPUT (or LONG_BINPUT) of the next memo index.
    pub fn put(&mut self) -> u32 {
        let index = self.memo.len() as u32 + 1;
        self.memo.insert(format!("#{index}"), index);
        if index < 256 {
            self.out.extend([b'q', index as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend(index.to_le_bytes());
        }
        index
    }

    /// BINGET (or LONG_BINGET).
    pub fn get(&mut self, index: u32) -> &mut Self {
        if index < 256 {
            self.out.extend([b'h', index as u8]);
        } else {
            self.out.push(b'j');
            self.out.extend(index.to_le_bytes());
        }
        self
    }

    /// Emits `write` the first time `key` is seen (memoizing it), BINGET
    /// afterwards.
    fn memoized(&mut self, key: String, write: impl FnOnce(&mut Self)) -> &mut Self {
        if let Some(&index) = self.memo.get(&key) {
            return self.get(index);
        }
        write(self);
        let index = self.put();
        self.memo.insert(key, index);
        self
    }

    /// BINUNICODE, memoized.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.memoized(format!("str:{s}"), |p| {
            p.out.push(b'X');
            p.out.extend((s.len() as u32).to_le_bytes());
            p.out.extend(s.as_bytes());
        })
    }

    /// The smallest of BININT1, BININT2, BININT, LONG1, as pickle does.
    pub fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.out.extend([b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            self.out.push(b'M');
            self.out.extend((v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.out.push(b'J');
            self.out.extend((v as i32).to_le_bytes());
        } else {
            self.out.extend([0x8a, 8]);
            self.out.extend(v.to_le_bytes());
        }
        self
    }

    /// GLOBAL `module name`, memoized.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.memoized(format!("global:{module}.{name}"), |p| {
            p.out.push(b'c');
            p.out.extend(format!("{module}\n{name}\n").as_bytes());
        })
    }

    /// GLOBAL without memoization (for hostile pickles).
    pub fn raw_global(&mut self, module: &str, name: &str) -> &mut Self {
        self.out.push(b'c');
        self.out.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }

    /// A tuple of ints, as pickle writes it.
    pub fn int_tuple(&mut self, values: &[u64]) -> &mut Self {
        match values.len() {
            0 => self.op(b')'),
            1..=3 => {
                for &v in values {
                    self.int(v as i64);
                }
                self.op(0x84 + values.len() as u8)
            }
            _ => {
                self.op(b'(');
                for &v in values {
                    self.int(v as i64);
                }
                self.op(b't')
            }
        }
    }

    /// `_rebuild_tensor_v2(persistent storage, offset, size, stride, False,
    /// OrderedDict())` as `torch.save` writes it.
    pub fn tensor(&mut self, t: &PickleTensor) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        self.op(b'(')
            .str("storage")
            .global("torch", &t.storage_class)
            .str(&t.key)
            .str("cpu")
            .int(t.numel as i64)
            .op(b't');
        self.put();
        self.op(b'Q');
        self.int(t.offset as i64).int_tuple(&t.shape);
        self.put();
        self.int_tuple(&t.stride);
        self.put();
        self.op(0x89)
            .global("collections", "OrderedDict")
            .op(b')')
            .op(b'R');
        self.put();
        self.op(b't');
        self.put();
        self.op(b'R');
        self.put();
        self
    }

    /// Ends the pickle.
    pub fn finish(&mut self) -> Vec<u8> {
        self.out.push(b'.');
        std::mem::take(&mut self.out)
    }
}

/// A state-dict pickle: `{name: tensor, ...}`.
pub fn state_dict_pickle(tensors: &[PickleTensor]) -> Vec<u8> {
    let mut p = Pickler::new();
    p.op(b'}');
    p.put();
    p.op(b'(');
    for t in tensors {
        p.str(&t.name).tensor(t);
    }
    p.op(b'u').finish()
}

/// A `torch.save` zip archive named `archive` (entries `archive/...`).
pub fn torch_zip(archive: &str, pickle: &[u8], storages: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64);
    let mut entry = |name: &str, bytes: &[u8]| {
        zip.start_file(format!("{archive}/{name}"), options)
            .unwrap();
        zip.write_all(bytes).unwrap();
    };
    entry("data.pkl", pickle);
    entry(".format_version", b"1");
    entry(".storage_alignment", b"64");
    entry("byteorder", b"little");
    for (key, bytes) in storages {
        entry(&format!("data/{key}"), bytes);
    }
    entry("version", b"3\n");
    zip.finish().unwrap().into_inner()
}

/// The tensors of a model as `torch.save` would describe them (storage `i`
/// for the `i`-th tensor, names with `prefix`), and their storages; the two
/// init buffers in bfloat16 when `bf16_init`, as official checkpoints have
/// them.
pub fn model_state_dict(
    model: &TrmModel,
    prefix: &str,
    bf16_init: bool,
) -> (Vec<PickleTensor>, Vec<(String, Vec<u8>)>) {
    let mut tensors = Vec::new();
    let mut storages = Vec::new();
    for (i, (name, t)) in model.named_tensors().into_iter().enumerate() {
        let key = i.to_string();
        let bf16 = bf16_init && name.ends_with("_init");
        let (class, bytes): (&str, Vec<u8>) = if bf16 {
            (
                "BFloat16Storage",
                t.data
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            )
        } else {
            (
                "FloatStorage",
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        };
        tensors.push(PickleTensor::contiguous(
            &format!("{prefix}{name}"),
            class,
            &key,
            &t.shape,
        ));
        storages.push((key, bytes));
    }
    (tensors, storages)
}

/// A whole `step_N` file of a model, as the authors' training writes it.
pub fn model_step_file(model: &TrmModel, bf16_init: bool) -> Vec<u8> {
    let (tensors, storages) = model_state_dict(model, OFFICIAL_PREFIX, bf16_init);
    torch_zip("step_1", &state_dict_pickle(&tensors), &storages)
}

/// The `arch.name` the TRM repository's training writes for each family.
pub const TRM_ARCH_NAME: &str = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1";
pub const HRM_ARCH_NAME: &str = "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1";
/// The name HRM's own repository (sapientinc/HRM) writes.
pub const HRM_OWN_ARCH_NAME: &str = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1";

/// An `all_config.yaml` for a model's configuration (the `arch` section as
/// the authors' training writes it, training-only fields included), named
/// as the TRM repository names its family.
pub fn all_config_yaml(model: &TrmModel) -> String {
    let name = match model.config().arch {
        trm_wgpu::Arch::Trm => TRM_ARCH_NAME,
        trm_wgpu::Arch::Hrm => HRM_ARCH_NAME,
    };
    all_config_yaml_named(model, name)
}

/// [`all_config_yaml`] with `arch.name` = `name`; an HRM's has no
/// `puzzle_emb_len` (HRM has no such setting).
pub fn all_config_yaml_named(model: &TrmModel, name: &str) -> String {
    let c = model.config();
    let puzzle_emb_len = match c.arch {
        trm_wgpu::Arch::Trm => format!("\n  puzzle_emb_len: {}", c.puzzle_emb_len),
        trm_wgpu::Arch::Hrm => String::new(),
    };
    format!(
        "arch:
  H_cycles: {}
  H_layers: {}
  L_cycles: {}
  L_layers: {}
  expansion: {}
  forward_dtype: bfloat16
  halt_exploration_prob: 0.1
  halt_max_steps: {}
  hidden_size: {}
  loss:
    loss_type: stablemax_cross_entropy
    name: losses@ACTLossHead
  mlp_t: {}
  name: {name}
  no_ACT_continue: true
  num_heads: {}
  pos_encodings: {}{puzzle_emb_len}
  puzzle_emb_ndim: {}
  rms_norm_eps: {:e}
  rope_theta: {}
lr: 0.0001
",
        c.h_cycles,
        c.h_layers,
        c.l_cycles,
        c.l_layers,
        c.expansion,
        c.halt_max_steps,
        c.hidden_size,
        c.mlp_t,
        c.num_heads,
        c.pos_encodings.as_str(),
        c.puzzle_emb_ndim,
        c.rms_norm_eps,
        c.rope_theta,
    )
}

/// The `dataset.json` of a model's configuration.
pub fn dataset_json(model: &TrmModel) -> String {
    let c = model.config();
    format!(
        r#"{{"pad_id": 0, "ignore_label_id": 0, "seq_len": {}, "vocab_size": {}, "num_puzzle_identifiers": {}, "total_puzzles": 1}}"#,
        c.seq_len, c.vocab_size, c.num_puzzle_identifiers
    )
}
