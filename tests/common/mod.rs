//! Shared test helpers: golden cases, tolerances with the worst element
//! named, the shared data folder.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use trm_wgpu::{PuzzleBatch, TrmModel};

/// `tests/data` of this repository.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The project's `../shared` folder (or `TRM_SHARED_DIR`), for the large
/// files kept out of git.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("TRM_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// A golden case: the model, its batch, and every stored tensor as f32.
pub struct Case {
    pub model: TrmModel,
    pub batch: PuzzleBatch,
    pub tensors: HashMap<String, Vec<f32>>,
    pub steps: usize,
}

impl Case {
    pub fn tensor(&self, name: &str) -> &[f32] {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("golden case lacks `{name}`"))
    }
}

fn read_f32(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::I32 => view
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Loads `NAME.model.safetensors` and `NAME.case.safetensors` from `dir`.
pub fn load_case_from(dir: &std::path::Path, name: &str) -> Case {
    let model = TrmModel::load(dir.join(format!("{name}.model.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let bytes = std::fs::read(dir.join(format!("{name}.case.safetensors"))).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: HashMap<String, Vec<f32>> = file
        .iter()
        .map(|(n, v)| (n.to_string(), read_f32(&v)))
        .collect();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let steps: usize = meta.metadata().as_ref().unwrap()["steps"].parse().unwrap();
    let tokens: Vec<i64> = tensors["inputs"].iter().map(|&v| v as i64).collect();
    let ids: Vec<i64> = tensors["puzzle_identifiers"]
        .iter()
        .map(|&v| v as i64)
        .collect();
    let batch = PuzzleBatch::new(model.config(), &tokens, Some(&ids)).unwrap();
    Case {
        model,
        batch,
        tensors,
        steps,
    }
}

/// A golden case copied into `tests/data/golden`.
pub fn load_case(name: &str) -> Case {
    load_case_from(&data_dir().join("golden"), name)
}

/// Agreement of two tensors.
#[derive(Debug, Clone, Copy)]
pub struct Diff {
    /// `||a - b|| / ||b||`
    pub rel_l2: f64,
    /// `max |a - b|`
    pub max_abs: f64,
    /// Index of the element with the largest error.
    pub worst: usize,
}

/// Relative L2 error and max error of `actual` against `expected`; a NaN
/// anywhere in `actual` counts as infinitely wrong at its index.
pub fn diff(actual: &[f32], expected: &[f32]) -> Diff {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let (mut num, mut den, mut max_abs, mut worst) = (0f64, 0f64, 0f64, 0usize);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = if a.is_finite() {
            (a as f64 - e as f64).abs()
        } else {
            f64::INFINITY
        };
        if err > max_abs || (i == 0 && err.is_nan()) {
            max_abs = err;
            worst = i;
        }
        num += err * err;
        den += (e as f64) * (e as f64);
    }
    Diff {
        rel_l2: (num / den.max(1e-300)).sqrt(),
        max_abs,
        worst,
    }
}

/// Asserts `rel_l2 <= rel_tol` and `max_abs <= abs_tol`, naming the worst
/// element (its value on both sides) on failure.
pub fn assert_close(
    what: &str,
    actual: &[f32],
    expected: &[f32],
    rel_tol: f64,
    abs_tol: f64,
) -> Diff {
    let d = diff(actual, expected);
    eprintln!(
        "{what}: rel L2 {:.2e}, max {:.2e} at {}",
        d.rel_l2, d.max_abs, d.worst
    );
    assert!(
        d.rel_l2 <= rel_tol && d.max_abs <= abs_tol,
        "{what}: relative L2 error {:.3e} (limit {rel_tol:.0e}), max error {:.3e} (limit {abs_tol:.0e}) at index {}: got {}, expected {}",
        d.rel_l2,
        d.max_abs,
        d.worst,
        actual[d.worst],
        expected[d.worst]
    );
    d
}
