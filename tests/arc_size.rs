//! A checkpoint of the paper's ARC size runs in little memory: its puzzle
//! table is 1.2M rows of 512 floats (2.5 GB, as ARC-AGI-2's), written as a
//! sparse file with only the rows of the puzzles solved (the rest holes).
//! `trm run` on the CPU must stay under 400 MB of peak resident memory (its
//! VmHWM, measured in the child process) and on lavapipe under the device's
//! 128 MiB storage binding limit; both must match the float64
//! implementation within 1e-5.
//!
//! The network is small (D = 64, one attention block): the table is what
//! is at stake, and a small network keeps the test fast on a software GPU.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{RawTensor, assert_close, assert_close_floor, f64_reference, read_output_f32};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{PuzzleBatch, TrmConfig, TrmModel};

/// ARC-AGI-2's checkpoints have about 1.2M puzzle identifiers.
const IDS: usize = 1_200_000;
const NDIM: usize = 512;
/// The puzzles solved: rows at the start, the middle and the end.
const USED: [usize; 3] = [1, 777_777, IDS - 1];
const ACT_STEPS: usize = 2;

fn config(ids: usize) -> TrmConfig {
    TrmConfig::from_json(&format!(
        r#"{{"seq_len": 12, "vocab_size": 12, "num_puzzle_identifiers": {ids},
            "hidden_size": 64, "expansion": 4, "num_heads": 4, "H_cycles": 1, "L_cycles": 2,
            "L_layers": 1, "halt_max_steps": {ACT_STEPS}, "mlp_t": false,
            "pos_encodings": "rope", "puzzle_emb_ndim": {NDIM}, "puzzle_emb_len": 8}}"#
    ))
    .unwrap()
}

/// Writes `small`'s network with a `[IDS, NDIM]` f32 table whose row
/// `USED[i]` is `small`'s row `i`, every other row a hole.
fn write_sparse_checkpoint(path: &Path, small: &TrmModel) {
    let big_config = config(IDS);
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "config": big_config.to_json() }),
    );
    let mut data = Vec::new();
    let mut table_rows = Vec::new();
    for (name, tensor) in small.named_tensors() {
        if name == "inner.puzzle_emb.weights" {
            table_rows = tensor.data;
            continue;
        }
        let start = data.len();
        data.extend(tensor.data.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name,
            serde_json::json!({"dtype": "F32", "shape": tensor.shape,
                "data_offsets": [start, data.len()]}),
        );
    }
    let table_start = data.len();
    let table_bytes = IDS * NDIM * 4;
    header.insert(
        "inner.puzzle_emb.weights".into(),
        serde_json::json!({"dtype": "F32", "shape": [IDS, NDIM],
            "data_offsets": [table_start, table_start + table_bytes]}),
    );
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&json).unwrap();
    file.write_all(&data).unwrap();
    let data_start = 8 + json.len() as u64;
    file.set_len(data_start + (table_start + table_bytes) as u64)
        .unwrap();
    for (i, &id) in USED.iter().enumerate() {
        let row = &table_rows[i * NDIM..(i + 1) * NDIM];
        file.seek(SeekFrom::Start(
            data_start + (table_start + id * NDIM * 4) as u64,
        ))
        .unwrap();
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        file.write_all(&bytes).unwrap();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn an_arc_size_table_runs_in_little_memory_on_the_cpu_and_on_lavapipe() {
    let dir = common::temp_dir("arc-size");
    let small = TrmModel::random(config(USED.len()), 0xa5c, 0.5).unwrap();
    let model_path = dir.join("arc-size.safetensors");
    write_sparse_checkpoint(&model_path, &small);
    let file_bytes = std::fs::metadata(&model_path).unwrap().len();
    assert!(file_bytes > 2_400_000_000, "{file_bytes} bytes");

    // the checkpoint as the engines see it: mapped, the table not read
    let model = TrmModel::load(&model_path).unwrap();
    assert!(model.weights().puzzle_emb.as_ref().unwrap().is_mapped());
    let c = model.config().clone();
    let mut rng = SplitMix64::new(7);
    let tokens: Vec<i64> = (0..USED.len() * c.seq_len)
        .map(|_| rng.below(c.vocab_size as u64) as i64)
        .collect();
    let ids: Vec<i64> = USED.iter().map(|&id| id as i64).collect();
    let batch = PuzzleBatch::new(&c, &tokens, Some(&ids)).unwrap();
    let reference = f64_reference::solve(&model, &batch, ACT_STEPS, false);
    drop(model);

    let input_path = dir.join("input.safetensors");
    let int32 = |v: &[i64]| v.iter().map(|&t| t as i32).collect::<Vec<i32>>();
    std::fs::write(
        &input_path,
        common::safetensors_bytes(
            &[
                RawTensor::i32("inputs", vec![USED.len(), c.seq_len], &int32(&tokens)),
                RawTensor::i32("puzzle_identifiers", vec![USED.len()], &int32(&ids)),
            ],
            None,
        ),
    )
    .unwrap();

    let mut backends = vec!["cpu"];
    if !common::gpu::skip_requested() {
        backends.push("vulkan");
    }
    for backend in backends {
        let output = dir.join(format!("out-{backend}.safetensors"));
        let (bytes, stats) = common::trm_run_stats(
            &model_path,
            &input_path,
            &output,
            backend,
            &[("TRM_POISON_GPU", "1")],
        );
        let peak = stats["peak_resident_mib"].as_f64().unwrap();
        if backend == "cpu" {
            assert!(
                peak < 400.0,
                "the CPU run peaked at {peak:.0} MiB resident, over 400"
            );
        } else {
            assert_eq!(stats["engine"], "gpu", "{stats}");
        }
        let what = |name: &str| format!("{backend} {name}");
        assert_close(
            &what("logits"),
            &read_output_f32(&bytes, "logits").1,
            &reference.logits,
            1e-5,
            1e-4,
        );
        assert_close(
            &what("z_H"),
            &read_output_f32(&bytes, "z_H").1,
            &reference.z_h,
            1e-5,
            1e-4,
        );
        assert_close_floor(
            &what("q_halt_logits"),
            &read_output_f32(&bytes, "q_halt_logits").1,
            &reference.q_halt_logits,
            1e-5,
            1e-4,
            1.0,
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_header_that_claims_more_than_the_file_holds_is_refused() {
    let dir = common::temp_dir("arc-size-lie");
    let small = TrmModel::random(config(USED.len()), 1, 0.5).unwrap();
    let path = dir.join("lie.safetensors");
    write_sparse_checkpoint(&path, &small);
    // cut the file short of the table's end
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 4)
        .unwrap();
    let err = TrmModel::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("data_offsets") || err.contains("safetensors"),
        "{err}"
    );
    // and more identifiers than the limit are refused by the configuration
    let err = TrmConfig::from_json(&config(IDS).to_json().replace(
        &format!("\"num_puzzle_identifiers\":{IDS}"),
        "\"num_puzzle_identifiers\":100000000",
    ))
    .and_then(|c| c.validate())
    .unwrap_err()
    .to_string();
    assert!(err.contains("num_puzzle_identifiers"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
