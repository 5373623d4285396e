//! The `trm` binary end to end: fresh random models of every variant through
//! `trm run` and through `trm convert` + `trm run` against the float64
//! implementation, and one clear error line (never a panic) for every bad
//! input.

mod common;

use common::torch_save::{all_config_yaml, dataset_json, model_step_file};
use common::{
    RawTensor, assert_close, assert_close_floor, assert_one_error_line, f64_reference,
    read_output_f32, safetensors_bytes, temp_dir, trm,
};

use trm_wgpu::{PosEncodings, TrmConfig, TrmModel};

fn config(mlp_t: bool, pos: PosEncodings) -> TrmConfig {
    TrmConfig {
        seq_len: 11,
        vocab_size: 7,
        num_puzzle_identifiers: 3,
        hidden_size: if mlp_t { 14 } else { 12 },
        expansion: 2.5,
        num_heads: 2,
        h_cycles: 2,
        l_cycles: 2,
        l_layers: 2,
        h_layers: 0,
        arch: Default::default(),
        halt_max_steps: 3,
        mlp_t,
        pos_encodings: pos,
        puzzle_emb_ndim: 10,
        puzzle_emb_len: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
    }
}

fn run_and_compare(mlp_t: bool, pos: PosEncodings) {
    run_config_and_compare(config(mlp_t, pos));
}

/// A fresh random model of `config` against float64, twice: its model file
/// straight through `trm run`, and its official form (`step_N`,
/// `all_config.yaml`, `dataset.json`) through `trm convert` + `trm run`.
fn run_config_and_compare(config: TrmConfig) {
    let seed = common::test_seed();
    let model = TrmModel::random(config, seed, 0.5).unwrap();
    let dir = temp_dir("cli-run");
    let (model_path, input_path, batch) = common::write_run_case(&dir, &model, 3, seed ^ 0x5eed);
    let reference = f64_reference::solve(&model, &batch, 3, false);
    run_and_check(&model, &model_path, &input_path, &reference, "trm run");

    let step = dir.join("step_1");
    let yaml = dir.join("all_config.yaml");
    let dataset = dir.join("dataset.json");
    std::fs::write(&step, model_step_file(&model, false)).unwrap();
    std::fs::write(&yaml, all_config_yaml(&model)).unwrap();
    std::fs::write(&dataset, dataset_json(&model)).unwrap();
    let converted_path = dir.join("converted.safetensors");
    let out = trm(&[
        "convert",
        step.to_str().unwrap(),
        "--config",
        yaml.to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
        "-o",
        converted_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_and_check(
        &model,
        &converted_path,
        &input_path,
        &reference,
        "trm convert + trm run",
    );
}

/// `trm run` of `model_path` on the CPU, three ACT steps, every output
/// against the float64 `reference`.
fn run_and_check(
    model: &TrmModel,
    model_path: &std::path::Path,
    input_path: &std::path::Path,
    reference: &f64_reference::RefOutput,
    route: &str,
) {
    let out_path = model_path.with_extension("out.safetensors");
    let out = trm(&[
        "run",
        "--model",
        model_path.to_str().unwrap(),
        "--input",
        input_path.to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{route}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&out_path).unwrap();
    let c = model.config();
    let (shape, logits) = read_output_f32(&bytes, "logits");
    assert_eq!(shape, vec![3, c.seq_len, c.vocab_size]);
    assert_close(
        &format!("{route}: logits"),
        &logits,
        &reference.logits,
        1e-5,
        1e-4,
    );
    let (shape, z_h) = read_output_f32(&bytes, "z_H");
    assert_eq!(shape, vec![3, c.state_len(), c.hidden_size]);
    assert_close(&format!("{route}: z_H"), &z_h, &reference.z_h, 1e-5, 1e-4);
    assert_close(
        &format!("{route}: z_L"),
        &read_output_f32(&bytes, "z_L").1,
        &reference.z_l,
        1e-5,
        1e-4,
    );
    assert_close_floor(
        &format!("{route}: q_halt_logits"),
        &read_output_f32(&bytes, "q_halt_logits").1,
        &reference.q_halt_logits,
        1e-5,
        1e-4,
        1.0,
    );
    assert_close_floor(
        &format!("{route}: q_continue_logits"),
        &read_output_f32(&bytes, "q_continue_logits").1,
        &reference.q_continue_logits,
        1e-5,
        1e-4,
        1.0,
    );
    let (shape, steps) = read_output_f32(&bytes, "steps");
    assert_eq!(shape, vec![3]);
    assert_eq!(steps, vec![3.0; 3]);
}

#[test]
fn run_mlp_mixer_matches_float64() {
    run_and_compare(true, PosEncodings::None);
}

#[test]
fn run_attention_rope_matches_float64() {
    run_and_compare(false, PosEncodings::Rope);
}

#[test]
fn run_attention_learned_matches_float64() {
    run_and_compare(false, PosEncodings::Learned);
}

#[test]
fn run_attention_without_positions_or_puzzle_embedding_matches_float64() {
    let mut c = config(false, PosEncodings::None);
    c.puzzle_emb_ndim = 0;
    run_config_and_compare(c);
}

#[test]
fn run_mlp_mixer_learned_positions_matches_float64() {
    run_and_compare(true, PosEncodings::Learned);
}

#[test]
fn run_mlp_mixer_without_puzzle_embedding_matches_float64() {
    let mut c = config(true, PosEncodings::None);
    c.puzzle_emb_ndim = 0;
    run_config_and_compare(c);
}

/// Fresh random HRM models (H_layers != L_layers): the model file through
/// `trm run`, and its official form through `trm convert` + `trm run`.
#[test]
fn run_hrm_matches_float64() {
    for (mlp_t, pos, l_layers, h_layers) in [
        (false, PosEncodings::Rope, 2, 3),
        (false, PosEncodings::Learned, 3, 1),
        (true, PosEncodings::None, 1, 2),
    ] {
        run_config_and_compare(TrmConfig {
            arch: trm_wgpu::Arch::Hrm,
            l_layers,
            h_layers,
            ..config(mlp_t, pos)
        });
    }
}

#[test]
fn run_with_steps_option() {
    let model = TrmModel::random(config(true, PosEncodings::None), 11, 0.5).unwrap();
    let dir = temp_dir("cli-steps");
    let (model_path, input_path, batch) = common::write_run_case(&dir, &model, 2, 5);
    let out_path = dir.join("out.safetensors");
    let out = trm(&[
        "run",
        "-m",
        model_path.to_str().unwrap(),
        "-i",
        input_path.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        "--steps",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&out_path).unwrap();
    assert_eq!(read_output_f32(&bytes, "steps").1, vec![1.0, 1.0]);
    let reference = f64_reference::solve(&model, &batch, 1, false);
    assert_close(
        "logits",
        &read_output_f32(&bytes, "logits").1,
        &reference.logits,
        1e-5,
        1e-4,
    );
}

#[test]
fn info_prints_configuration_and_cost() {
    let model = TrmModel::random(config(true, PosEncodings::None), 1, 1.0).unwrap();
    let dir = temp_dir("cli-info");
    let path = dir.join("m.safetensors");
    model.save(&path).unwrap();
    let out = trm(&["info", "--model", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&model.parameter_count().to_string()),
        "{text}"
    );
    assert!(text.contains("GFLOP"), "{text}");
    let out = trm(&["info", "--model", path.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["parameters"], model.parameter_count());
    assert_eq!(
        json["flops_per_recursion_step"],
        model.config().flops_per_recursion_step()
    );
}

/// Every bad input to `trm run` fails with one `error: ` line saying what
/// was wrong, and no panic.
#[test]
fn bad_inputs_give_one_error_line() {
    let model = TrmModel::random(config(true, PosEncodings::None), 2, 0.5).unwrap();
    let dir = temp_dir("cli-bad");
    let (model_path, input_path, _) = common::write_run_case(&dir, &model, 2, 9);
    let out_path = dir.join("out.safetensors");
    let m = model_path.to_str().unwrap();
    let i = input_path.to_str().unwrap();
    let o = out_path.to_str().unwrap();
    let run = |model: &str, input: &str| trm(&["run", "-m", model, "-i", input, "-o", o]);

    // unreadable model
    assert_one_error_line(&run("/nonexistent.safetensors", i), "No such file");
    // truncated model
    let bytes = std::fs::read(&model_path).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    assert_one_error_line(
        &run(truncated.to_str().unwrap(), i),
        "not a valid safetensors file",
    );
    // bad header
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").unwrap();
    assert_one_error_line(
        &run(garbage.to_str().unwrap(), i),
        "not a valid safetensors file",
    );
    // token id out of range
    let bad_tokens = dir.join("bad_tokens.safetensors");
    let mut tokens = vec![1i32; 22];
    tokens[20] = 99;
    std::fs::write(
        &bad_tokens,
        safetensors_bytes(&[RawTensor::i32("inputs", vec![2, 11], &tokens)], None),
    )
    .unwrap();
    assert_one_error_line(
        &run(m, bad_tokens.to_str().unwrap()),
        "token id 99 of puzzle 1 at position 9",
    );
    // puzzle id out of range
    let bad_ids = dir.join("bad_ids.safetensors");
    std::fs::write(
        &bad_ids,
        safetensors_bytes(
            &[
                RawTensor::i32("inputs", vec![2, 11], &[1; 22]),
                RawTensor::i64("puzzle_identifiers", vec![2], &[0, 3]),
            ],
            None,
        ),
    )
    .unwrap();
    assert_one_error_line(&run(m, bad_ids.to_str().unwrap()), "puzzle identifier 3");
    // wrong rank
    let bad_rank = dir.join("bad_rank.safetensors");
    std::fs::write(
        &bad_rank,
        safetensors_bytes(&[RawTensor::i32("inputs", vec![22], &[1; 22])], None),
    )
    .unwrap();
    assert_one_error_line(&run(m, bad_rank.to_str().unwrap()), "shape [B, 11]");
    // wrong dtype
    let bad_dtype = dir.join("bad_dtype.safetensors");
    std::fs::write(
        &bad_dtype,
        safetensors_bytes(&[RawTensor::f32("inputs", vec![2, 11], &[1.0; 22])], None),
    )
    .unwrap();
    assert_one_error_line(&run(m, bad_dtype.to_str().unwrap()), "dtype F32");
    // missing tensor in the model
    let missing = dir.join("missing.safetensors");
    let tensors: Vec<RawTensor> = common::raw_tensors(&model)
        .into_iter()
        .filter(|t| t.name != "inner.q_head.weight")
        .collect();
    std::fs::write(
        &missing,
        common::model_bytes(&tensors, &model.config().to_json()),
    )
    .unwrap();
    assert_one_error_line(&run(missing.to_str().unwrap(), i), "inner.q_head.weight");
    // config contradicting the tensors
    let contradicting = dir.join("contradicting.safetensors");
    let mut c = model.config().clone();
    c.seq_len = 12;
    std::fs::write(
        &contradicting,
        common::model_bytes(&common::raw_tensors(&model), &c.to_json()),
    )
    .unwrap();
    assert_one_error_line(
        &run(contradicting.to_str().unwrap(), i),
        "configuration implies",
    );
    // zero ACT steps
    assert_one_error_line(
        &trm(&["run", "-m", m, "-i", i, "-o", o, "--steps", "0"]),
        "at least one ACT step",
    );
    // unwritable output
    assert_one_error_line(
        &trm(&[
            "run",
            "-m",
            m,
            "-i",
            i,
            "-o",
            "/nonexistent/dir/out.safetensors",
        ]),
        "/nonexistent/dir",
    );
}

/// Sizes a configuration or a flag implies are checked before anything is
/// allocated or started: a model file claiming a million tokens (its
/// attention scores alone would take 4 TB: the CPU engine used to die
/// allocating them, exit code 134), and `--threads`, `--augment`,
/// `--trajectories` and bench's `--batch` at a billion, each end in one
/// error line and exit code 1 within seconds.
#[test]
fn sizes_beyond_the_limits_give_one_error_line_in_seconds() {
    let within = 30.0; // seconds; a second or less on a quiet machine
    for pos in [PosEncodings::None, PosEncodings::Rope] {
        let model = common::million_token_model(pos);
        let dir = temp_dir("cli-million-tokens");
        let (model_path, input_path, _) = common::write_run_case(&dir, &model, 1, 3);
        let (m, i) = (model_path.to_str().unwrap(), input_path.to_str().unwrap());
        let o = dir.join("out.safetensors");
        let o = o.to_str().unwrap();
        common::assert_refused_in_seconds(
            &[
                "run",
                "-m",
                m,
                "-i",
                i,
                "-o",
                o,
                "--backend",
                "cpu",
                "--threads",
                "2",
            ],
            "the CPU engine needs 7.3 TiB of memory, 7.3 TiB of it for attention scores (2 threads x S^2 floats, S = 1000000), beyond the limit of 8.0 GiB",
            within,
        );
    }

    let model = TrmModel::random(config(true, PosEncodings::None), 2, 0.5).unwrap();
    let dir = temp_dir("cli-billions");
    let (model_path, input_path, _) = common::write_run_case(&dir, &model, 2, 9);
    let (m, i) = (model_path.to_str().unwrap(), input_path.to_str().unwrap());
    let o = dir.join("out.safetensors");
    let o = o.to_str().unwrap();
    let run = |extra: &[&str]| -> Vec<String> {
        ["run", "-m", m, "-i", i, "-o", o]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let billion = "1000000000";
    for (args, needle) in [
        (
            run(&["--threads", billion]),
            "1000000000 CPU threads asked for",
        ),
        (
            run(&["--task", "sudoku", "--augment", billion]),
            "the state of 2 puzzles x 1000000000 variants x 1 trajectories",
        ),
        (
            run(&["--trajectories", billion, "--noise", "0.5"]),
            "the state of 2 puzzles x 1 variants x 1000000000 trajectories",
        ),
        (
            run(&[
                "--task",
                "maze",
                "--augment",
                billion,
                "--trajectories",
                billion,
                "--noise",
                "0.5",
            ]),
            "1000000000 variants x 1000000000 trajectories",
        ),
        (
            [
                "bench",
                "--backend",
                "cpu",
                "--threads",
                billion,
                "--batch",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            "1000000000 CPU threads asked for",
        ),
        (
            ["bench", "--backend", "cpu", "--batch", billion]
                .map(String::from)
                .to_vec(),
            "--batch: 1000000000 puzzles need",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::assert_refused_in_seconds(&args, needle, within);
    }
}
