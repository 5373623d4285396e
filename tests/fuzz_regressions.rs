//! Replays the fuzzers' seed corpus (`fuzz/seeds/<target>/`) and every
//! crash input they found and that was fixed (`fuzz/regressions/<target>/`)
//! through the fuzz targets' own entry points (`fuzz/harness.rs`), so that
//! CI checks them without a fuzzing toolchain. No input may panic; each
//! gives a typed error or a model that passes the harness's checks.
//!
//! File names say what to expect: `ok-*` must be accepted by at least one
//! call of its target, `err-*` refused by every call, `crash-*` (fixed
//! findings) only must not panic. `cargo test --test fuzz_regressions --
//! --ignored` rewrites the generated seeds.

mod common;

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

use common::torch_save::{
    OFFICIAL_PREFIX, PickleTensor, Pickler, model_state_dict, model_step_file, state_dict_pickle,
    torch_zip,
};
use common::{RawTensor, model_bytes, raw_tensors, safetensors_bytes};
use trm_wgpu::{PosEncodings, Precision, TrmConfig, TrmError, TrmModel};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file of `fuzz/seeds/<target>` and `fuzz/regressions/<target>`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8]) -> Vec<Result<(), TrmError>>) {
    let files = inputs(target);
    assert!(files.len() >= 3, "{target}: seeds are missing");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let outcomes = run(&bytes);
        let summary: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Ok(()) => "accepted".to_string(),
                Err(e) => format!("refused: {e}"),
            })
            .collect();
        eprintln!("{target}/{name}: {}", summary.join(" | "));
        if name.starts_with("ok-") {
            assert!(
                outcomes.iter().any(Result::is_ok),
                "{name} must be accepted"
            );
        } else if name.starts_with("err-") {
            assert!(
                !outcomes.is_empty() && outcomes.iter().all(Result::is_err),
                "{name} must be refused"
            );
        }
    }
}

#[test]
fn model_file_seeds_and_regressions() {
    replay("model_file", harness::model_file);
}

#[test]
fn official_seeds_and_regressions() {
    replay("official", harness::official);
}

#[test]
fn batch_seeds_and_regressions() {
    replay("batch", harness::batch);
}

#[test]
fn arc_seeds_and_regressions() {
    replay("arc", harness::arc);
}

#[test]
fn engine_seeds_and_regressions() {
    replay("engine", harness::engine);
}

/// The model claiming a million tokens is refused by the engine's size
/// checks, from bytes and through a mapping alike, not by accident.
#[test]
fn million_token_seeds_are_refused_by_size() {
    for path in inputs("engine") {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.contains("million-tokens") {
            continue;
        }
        for outcome in harness::engine(&std::fs::read(&path).unwrap()) {
            assert!(
                matches!(&outcome, Err(TrmError::TooLarge(m)) if m.contains("attention scores")),
                "{name}: {outcome:?}"
            );
        }
    }
}

/// The malicious seeds are refused by name, not by accident.
#[test]
fn malicious_seeds_name_their_global() {
    for path in inputs("official") {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.contains("malicious") {
            continue;
        }
        for outcome in harness::official(&std::fs::read(&path).unwrap()) {
            assert!(
                matches!(outcome, Err(TrmError::ForbiddenPickleGlobal { .. })),
                "{name}: {outcome:?}"
            );
        }
    }
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(bytes);
    out
}

/// The pickle of [`harness::tiny_model`] whose storages are
/// [`harness::template_storages`].
fn tiny_pickle(edit: impl FnOnce(&mut Vec<PickleTensor>)) -> Vec<u8> {
    let (mut tensors, _) = model_state_dict(&harness::tiny_model(), OFFICIAL_PREFIX, false);
    edit(&mut tensors);
    state_dict_pickle(&tensors)
}

/// Rewrites the generated seeds (small files; the golden step_1000 pickle
/// is copied as it is, memo opcodes and all).
#[test]
#[ignore]
fn regenerate_seeds() {
    // model_file: the project's format.
    let tiny = harness::tiny_model();
    write(
        "model_file",
        "ok-tiny-mlp.safetensors",
        &tiny.to_safetensors_bytes().unwrap(),
    );
    let attention = TrmModel::random(
        TrmConfig {
            mlp_t: false,
            pos_encodings: PosEncodings::Learned,
            puzzle_emb_len: 0,
            puzzle_emb_ndim: 12,
            ..tiny.config().clone()
        },
        5,
        0.5,
    )
    .unwrap();
    let mut tensors: Vec<RawTensor> = raw_tensors(&attention);
    for t in &mut tensors {
        t.name = format!("{OFFICIAL_PREFIX}{}", t.name);
        if t.name.ends_with("_init") {
            let values: Vec<f32> = t
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            t.dtype = safetensors::Dtype::BF16;
            t.bytes = values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect();
        }
    }
    write(
        "model_file",
        "ok-attention-learned-prefixed-bf16.safetensors",
        &model_bytes(&tensors, &attention.config().to_json()),
    );
    let bytes = tiny.to_safetensors_bytes().unwrap();
    write(
        "model_file",
        "err-truncated.safetensors",
        &bytes[..bytes.len() / 2],
    );
    let mut lying = bytes.clone();
    lying[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    write("model_file", "err-header-claims-1-TiB.safetensors", &lying);

    // official: mode 0, a whole archive; mode 1, a pickle alone.
    write(
        "official",
        "ok-zip-tiny-bf16-init",
        &with_mode(0, &model_step_file(&tiny, true)),
    );
    write(
        "official",
        "ok-pickle-tiny",
        &with_mode(1, &tiny_pickle(|_| ())),
    );
    let golden_pickle = {
        let bytes = std::fs::read(common::data_dir().join("golden/official/step_1000")).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut file = archive.by_name("step_1000/data.pkl").unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut out).unwrap();
        out
    };
    write(
        "official",
        "err-pickle-step-1000-wrong-storages",
        &with_mode(1, &golden_pickle),
    );
    let os_system = Pickler::new()
        .raw_global("os", "system")
        .str("echo pwned")
        .op(0x85)
        .op(b'R')
        .finish();
    write(
        "official",
        "err-pickle-malicious-os-system",
        &with_mode(1, &os_system),
    );
    write(
        "official",
        "err-zip-malicious-os-system",
        &with_mode(0, &torch_zip("evil", &os_system, &[])),
    );
    let mut p = Pickler::new();
    p.out.extend([0x8c, 8]);
    p.out.extend(b"builtins");
    p.out.extend([0x8c, 4]);
    p.out.extend(b"eval");
    let eval = p.op(0x93).str("1+1").op(0x85).op(b'R').finish();
    write(
        "official",
        "err-pickle-malicious-builtins-eval",
        &with_mode(1, &eval),
    );
    write(
        "official",
        "err-pickle-offset-outside-storage",
        &with_mode(1, &tiny_pickle(|t| t[0].offset = t[0].numel)),
    );
    write(
        "official",
        "err-pickle-mismatched-numel",
        &with_mode(1, &tiny_pickle(|t| t[1].numel += 3)),
    );

    write(
        "official",
        "ok-yaml-tiny",
        &with_mode(2, harness::TINY_YAML.as_bytes()),
    );
    write(
        "official",
        "ok-dataset-tiny",
        &with_mode(3, harness::TINY_DATASET.as_bytes()),
    );
    write(
        "official",
        "err-yaml-alias-bomb",
        &with_mode(
            2,
            b"a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\narch: {hidden_size: *b}\n",
        ),
    );

    // engine: a mode byte (even: from the bytes, odd: mapped), then a
    // model file. SwiGLU widths of 1 or more are 256 (so int8, to stay
    // small); the tiny model's are 0, which the CPU engine refuses.
    let widths = |config: TrmConfig| -> TrmModel {
        let config = TrmConfig {
            expansion: 1.0,
            ..config
        };
        TrmModel::random(config, 6, 0.5)
            .unwrap()
            .to_precision(Precision::Int8)
            .unwrap()
    };
    let mlp = widths(TrmConfig {
        hidden_size: 4,
        num_heads: 1,
        puzzle_emb_ndim: 4,
        ..tiny.config().clone()
    });
    let rope = widths(TrmConfig {
        mlp_t: false,
        pos_encodings: PosEncodings::Rope,
        ..tiny.config().clone()
    });
    let learned = widths(attention.config().clone());
    let million = common::million_token_model(PosEncodings::None)
        .to_precision(Precision::Int8)
        .unwrap();
    for (name, model) in [
        ("ok-{mode}-mlp-int8", &mlp),
        ("ok-{mode}-attention-rope-int8", &rope),
        ("ok-{mode}-attention-learned-int8", &learned),
        ("err-{mode}-tiny-mlp-zero-widths", &tiny),
        ("err-{mode}-million-tokens-int8", &million),
    ] {
        let bytes = model.to_safetensors_bytes().unwrap();
        for mode in [0, 1] {
            let name = name.replace("{mode}", &mode.to_string());
            write("engine", &name, &with_mode(mode, &bytes));
        }
    }
    // a NaN in the puzzle table: the loaders check the table's rows as a
    // solve reads them, and the engine reads row 0 only
    let file = mlp.to_safetensors_bytes().unwrap();
    let (table, row_bytes) = {
        let parsed = safetensors::SafeTensors::deserialize(&file).unwrap();
        let t = parsed.tensor("inner.puzzle_emb.weights").unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        (
            t.data().as_ptr() as usize - file.as_ptr() as usize,
            t.shape()[1] * 4,
        )
    };
    for (row, expect) in [(1, "ok"), (0, "err")] {
        let mut nan_row = file.clone();
        let at = table + row * row_bytes;
        nan_row[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        for mode in [0, 1] {
            let name = format!("{expect}-{mode}-nan-in-puzzle-row-{row}");
            write("engine", &name, &with_mode(mode, &nan_row));
        }
    }
    write(
        "engine",
        "err-1-truncated",
        &with_mode(1, &bytes[..bytes.len() / 2]),
    );

    // arc: a predictions file of the fixture's first two rows (the whole
    // one is beyond the fuzzers' 16 KiB).
    let fixture = std::fs::read(common::data_dir().join("arc/predictions.safetensors")).unwrap();
    let fixture = safetensors::SafeTensors::deserialize(&fixture).unwrap();
    let rows = |name: &str, row_bytes: usize| {
        fixture.tensor(name).unwrap().data()[..2 * row_bytes].to_vec()
    };
    let two_rows = [
        ("inputs", vec![2, 900], 900 * 4, safetensors::Dtype::I32),
        ("preds", vec![2, 900], 900 * 4, safetensors::Dtype::I32),
        ("puzzle_identifiers", vec![2], 4, safetensors::Dtype::I32),
        ("q_halt_logits", vec![2], 4, safetensors::Dtype::F32),
    ]
    .map(|(name, shape, row_bytes, dtype)| RawTensor {
        name: name.to_string(),
        dtype,
        shape,
        bytes: rows(name, row_bytes),
    });
    write(
        "arc",
        "ok-5-predictions-two-rows.safetensors",
        &with_mode(5, &safetensors_bytes(&two_rows, None)),
    );

    // batch: trm run's input.
    let sudoku: Vec<i32> = (0..2 * 81).map(|i| i % 11).collect();
    write(
        "batch",
        "ok-sudoku-int32.safetensors",
        &safetensors_bytes(&[RawTensor::i32("inputs", vec![2, 81], &sudoku)], None),
    );
    write(
        "batch",
        "ok-tiny-int64-with-ids.safetensors",
        &safetensors_bytes(
            &[
                RawTensor::i64("inputs", vec![3, 4], &[0, 1, 2, 1, 2, 2, 0, 0, 1, 1, 1, 1]),
                RawTensor::i64("puzzle_identifiers", vec![3], &[0, 1, 1]),
            ],
            None,
        ),
    );
    write(
        "batch",
        "err-token-out-of-range.safetensors",
        &safetensors_bytes(
            &[RawTensor::i32("inputs", vec![1, 4], &[0, 1, 99, 1])],
            None,
        ),
    );
}

/// The seeds are small, as a corpus kept in git should be.
#[test]
fn seeds_stay_small() {
    for target in ["model_file", "official", "batch", "engine"] {
        for path in inputs(target) {
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= 16 << 10, "{}: {len} bytes", path.display());
        }
    }
}
