//! Checkpoints at reduced precision: `trm convert --precision` writes F16,
//! BF16 or I8 tensors (int8 with `<name>_scale`), they load as stored
//! (mapped or from bytes, the same model), the engines compute with exactly
//! the dequantized weights, and malformed int8 files are refused with typed
//! errors.

mod common;

use std::collections::HashMap;

use common::RawTensor;
use safetensors::Dtype;
use trm_wgpu::{LoadOptions, Precision, TrmConfig, TrmError, TrmModel};

fn config() -> TrmConfig {
    TrmConfig::from_json(
        r#"{"seq_len": 9, "vocab_size": 7, "num_puzzle_identifiers": 5,
            "hidden_size": 12, "expansion": 2, "num_heads": 2, "H_cycles": 1, "L_cycles": 2,
            "L_layers": 2, "halt_max_steps": 2, "mlp_t": false,
            "pos_encodings": "learned", "puzzle_emb_ndim": 12, "puzzle_emb_len": 0}"#,
    )
    .unwrap()
}

/// The tensors of a model file as written, by name.
fn tensors_of(bytes: &[u8]) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    file.iter()
        .map(|(name, v)| {
            (
                name.to_string(),
                (v.dtype(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect()
}

fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut Vec<RawTensor>)) -> Vec<u8> {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut tensors: Vec<RawTensor> = file
        .iter()
        .map(|(name, v)| RawTensor {
            name: name.to_string(),
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            bytes: v.data().to_vec(),
        })
        .collect();
    edit(&mut tensors);
    common::safetensors_bytes(&tensors, meta.metadata().clone())
}

#[test]
fn each_precision_round_trips_as_stored() {
    let model = TrmModel::random(config(), 3, 0.5).unwrap();
    let dir = common::temp_dir("precision-files");
    for precision in Precision::ALL {
        let converted = model.to_precision_all(precision).unwrap();
        assert_eq!(converted.precision(), precision);
        let bytes = converted.to_safetensors_bytes().unwrap();
        let tensors = tensors_of(&bytes);
        let dtype = match precision {
            Precision::F32 => Dtype::F32,
            Precision::F16 => Dtype::F16,
            Precision::Bf16 => Dtype::BF16,
            Precision::Int8 => Dtype::I8,
        };
        let gate_up = "inner.L_level.layers.0.mlp.gate_up_proj.weight";
        assert_eq!(tensors[gate_up].0, dtype);
        assert_eq!(tensors["inner.puzzle_emb.weights"].0, dtype);
        // the vectors stay f32; int8 matrices carry their scales
        assert_eq!(tensors["inner.H_init"].0, Dtype::F32);
        let scale = format!("{gate_up}_scale");
        assert_eq!(
            tensors.get(&scale).map(|t| (t.0, t.1.clone())),
            (precision == Precision::Int8)
                .then(|| (Dtype::F32, vec![2 * config().channel_inter()])),
        );

        // mapped from a file, or from bytes: the same model, at its precision
        let path = dir.join(format!("{precision}.safetensors"));
        converted.save(&path).unwrap();
        let mapped = TrmModel::load(&path).unwrap();
        let owned =
            TrmModel::from_safetensors_bytes(&bytes, "bytes", &LoadOptions::default(), None)
                .unwrap();
        assert_eq!(mapped.precision(), precision);
        assert!(mapped.weights().layers[0].gate_up.is_mapped());
        assert!(!owned.weights().layers[0].gate_up.is_mapped());
        assert_eq!(mapped.named_tensors(), owned.named_tensors());
        assert_eq!(mapped.named_tensors(), converted.named_tensors());
        // and a bf16 file loads without widening: same bytes per part
        assert_eq!(mapped.stored_bytes(), converted.stored_bytes());
        // --precision at load converts the network only
        let widened = TrmModel::load_with(
            &path,
            &LoadOptions::default().precision(Precision::F32),
            None,
        )
        .unwrap();
        assert_eq!(widened.precision(), Precision::F32);
        assert_eq!(
            widened.weights().puzzle_emb.as_ref().unwrap().precision(),
            precision
        );
        assert_eq!(widened.named_tensors(), converted.named_tensors());
    }
    let sizes: Vec<u64> = Precision::ALL
        .iter()
        .map(|&p| model.to_precision(p).unwrap().stored_bytes().network)
        .collect();
    // f32 : f16 : bf16 : int8 = 4 : 2 : 2 : 1 (+ 4 bytes a row)
    assert_eq!(sizes[1] * 2, sizes[0]);
    assert_eq!(sizes[2], sizes[1]);
    assert!(
        sizes[3] * 4 > sizes[0] && sizes[3] * 3 < sizes[0],
        "{sizes:?}"
    );
}

#[test]
fn trm_convert_rewrites_a_checkpoint_at_a_precision() {
    let dir = common::temp_dir("precision-convert");
    let model = TrmModel::random(config(), 4, 0.5).unwrap();
    let input = dir.join("f32.safetensors");
    model.save(&input).unwrap();
    for precision in ["f16", "bf16", "int8"] {
        let output = dir.join(format!("{precision}.safetensors"));
        let out = common::trm(&[
            "convert",
            input.to_str().unwrap(),
            "--precision",
            precision,
            "-o",
            output.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loaded = TrmModel::load(&output).unwrap();
        assert_eq!(loaded.precision().as_str(), precision);
        let info = common::trm(&["info", "-m", output.to_str().unwrap(), "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(json["precision"], precision);
        assert_eq!(
            json["bytes"]["network"].as_u64().unwrap(),
            loaded.stored_bytes().network
        );
    }
    let out = common::trm(&[
        "convert",
        input.to_str().unwrap(),
        "--precision",
        "int4",
        "-o",
        dir.join("x").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[test]
fn malformed_int8_files_are_refused() {
    let model = TrmModel::random(config(), 5, 0.5)
        .unwrap()
        .to_precision_all(Precision::Int8)
        .unwrap();
    let good = model.to_safetensors_bytes().unwrap();
    let load = |bytes: &[u8]| {
        TrmModel::from_safetensors_bytes(bytes, "test", &LoadOptions::default(), None)
    };
    assert!(load(&good).is_ok());
    let gate_up = "inner.L_level.layers.1.mlp.gate_up_proj.weight";
    let scale = format!("{gate_up}_scale");

    let missing = rewrite(&good, |t| t.retain(|t| t.name != scale));
    let err = load(&missing).unwrap_err();
    assert!(
        matches!(&err, TrmError::MissingTensor { name, .. } if *name == scale),
        "{err}"
    );

    let wrong_shape = rewrite(&good, |t| {
        let s = t.iter_mut().find(|t| t.name == scale).unwrap();
        s.shape = vec![3];
        s.bytes.truncate(12);
    });
    let err = load(&wrong_shape).unwrap_err();
    assert!(matches!(err, TrmError::TensorShape { .. }), "{err}");

    let nan_scale = rewrite(&good, |t| {
        let s = t.iter_mut().find(|t| t.name == scale).unwrap();
        s.bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let err = load(&nan_scale).unwrap_err();
    assert!(matches!(err, TrmError::NonFinite { .. }), "{err}");

    // a scale beside a float tensor
    let stray = rewrite(
        &model
            .to_precision(Precision::F32)
            .unwrap()
            .to_safetensors_bytes()
            .unwrap(),
        |t| {
            let rows = 2 * config().channel_inter();
            t.push(RawTensor::f32(&scale, vec![rows], &vec![1.0; rows]));
        },
    );
    let err = load(&stray).unwrap_err();
    assert!(matches!(err, TrmError::TensorDtype { .. }), "{err}");

    // an int8 vector: the vectors are f32 at every precision
    let int8_vector = rewrite(&good, |t| {
        let b = t
            .iter_mut()
            .find(|t| t.name == "inner.q_head.bias")
            .unwrap();
        b.dtype = Dtype::I8;
        b.bytes = vec![1, 2];
    });
    let err = load(&int8_vector).unwrap_err();
    assert!(matches!(err, TrmError::TensorDtype { .. }), "{err}");

    // a NaN in an f16 matrix is refused at load
    let f16 = model.to_precision_all(Precision::F16).unwrap();
    let nan = rewrite(&f16.to_safetensors_bytes().unwrap(), |t| {
        let w = t.iter_mut().find(|t| t.name == gate_up).unwrap();
        w.bytes[2..4].copy_from_slice(&half::f16::NAN.to_le_bytes());
    });
    let err = load(&nan).unwrap_err();
    assert!(matches!(err, TrmError::NonFinite { index: 1, .. }), "{err}");
}

#[test]
fn a_non_finite_puzzle_row_is_refused_when_read() {
    // the table is not read at load (it may be a 2.5 GB mapping): a NaN in
    // a row fails the solve that reads it, with a typed error
    let model = TrmModel::random(config(), 6, 0.5).unwrap();
    let bytes = rewrite(&model.to_safetensors_bytes().unwrap(), |t| {
        let w = t
            .iter_mut()
            .find(|t| t.name == "inner.puzzle_emb.weights")
            .unwrap();
        let at = 3 * 12 * 4;
        w.bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let dir = common::temp_dir("precision-nan-row");
    let path = dir.join("m.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let loaded = std::sync::Arc::new(TrmModel::load(&path).unwrap());
    assert!(loaded.puzzle_rows(&[0, 2, 4]).is_ok());
    let err = loaded.puzzle_rows(&[3]).unwrap_err();
    assert!(
        matches!(err, TrmError::NonFinite { index: 36, .. }),
        "{err}"
    );
    let mut engine = trm_wgpu::CpuEngine::new(loaded).unwrap();
    let tokens = vec![1u32; 9];
    use trm_wgpu::Engine;
    let err = engine
        .solve_puzzle(&tokens, 3, &trm_wgpu::SolveOptions::default())
        .unwrap_err();
    assert!(matches!(err, TrmError::NonFinite { .. }), "{err}");
    assert!(
        engine
            .solve_puzzle(&tokens, 2, &trm_wgpu::SolveOptions::default())
            .is_ok()
    );
}
