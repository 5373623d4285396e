//! Official checkpoints as published (`step_N` + `all_config.yaml` +
//! `dataset.json`), converted without Python: bit-identical weights, the
//! golden outputs reproduced, configuration fields inferred from shapes, and
//! `trm convert` end to end.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::torch_save::{all_config_yaml, dataset_json, model_step_file};
use common::{
    RawTensor, assert_close, data_dir, load_case, read_output_f32, safetensors_bytes, temp_dir, trm,
};
use safetensors::SafeTensors;
use trm_wgpu::checkpoint::official::{self, ConvertOptions};
use trm_wgpu::{
    CpuEngine, Engine, PosEncodings, PuzzleBatch, SolveOptions, TrmConfig, TrmError, TrmModel,
};

fn golden_official() -> PathBuf {
    data_dir().join("golden/official")
}

/// The trained sample model, both forms, as the project carries it.
fn sudoku_easy() -> PathBuf {
    common::repo_dir().join("data/sudoku-easy")
}

fn convert_step_1000(with_dataset: bool) -> TrmModel {
    let dir = golden_official();
    let dataset = with_dataset.then(|| dir.join("dataset.json"));
    official::convert(dir.join("step_1000"), dir.join("all_config.yaml"), dataset)
        .unwrap_or_else(|e| panic!("step_1000: {e}"))
}

/// Same configuration, same names and shapes, same bits.
fn assert_bit_identical(converted: &TrmModel, reference: &TrmModel) {
    assert_eq!(converted.config(), reference.config());
    let (a, b) = (converted.named_tensors(), reference.named_tensors());
    assert_eq!(a.len(), b.len());
    for ((name_a, ta), (name_b, tb)) in a.iter().zip(&b) {
        assert_eq!(name_a, name_b);
        assert_eq!(ta.shape, tb.shape, "{name_a}");
        let bits = |t: &trm_wgpu::Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(ta) == bits(tb), "{name_a} differs");
    }
}

#[test]
fn step_1000_converts_to_the_golden_model_bit_for_bit() {
    let golden = TrmModel::load(data_dir().join("golden/sudoku_mlp_small.model.safetensors"))
        .expect("golden model");
    assert_bit_identical(&convert_step_1000(true), &golden);
}

#[test]
fn step_1000_without_dataset_json_infers_the_same_model() {
    let dir = golden_official();
    let conversion = official::convert_with(
        dir.join("step_1000"),
        dir.join("all_config.yaml"),
        None::<PathBuf>,
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_bit_identical(&conversion.model, &convert_step_1000(true));
    let inferred = conversion.inferred.join("; ");
    assert!(inferred.contains("vocab_size = 11"), "{inferred}");
    assert!(
        inferred.contains("num_puzzle_identifiers = 1"),
        "{inferred}"
    );
    assert!(inferred.contains("seq_len = 81"), "{inferred}");
    assert!(conversion.ignored_fields.is_empty());
}

#[test]
fn step_1000_reproduces_the_golden_logits_over_16_act_steps() {
    let case = load_case("sudoku_mlp_small");
    let mut engine = CpuEngine::new(Arc::new(convert_step_1000(true))).unwrap();
    let out = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    assert!(out.steps.iter().all(|&s| s == 16));
    for name in ["logits", "q_halt_logits", "q_continue_logits"] {
        let expected = case.tensor(&format!("{name}.step16"));
        let actual = match name {
            "logits" => &out.logits,
            "q_halt_logits" => &out.q_halt_logits,
            _ => &out.q_continue_logits,
        };
        assert_close(name, actual, expected, 1e-5, 1e-4);
    }
    assert_close("z_H", &out.z_h, case.tensor("z_H"), 1e-5, 1e-4);
}

#[test]
fn sudoku_easy_step_827_matches_its_model_file() {
    let dir = sudoku_easy();
    let converted = official::convert(
        dir.join("official/step_827"),
        dir.join("official/all_config.yaml"),
        Some(dir.join("official/dataset.json")),
    )
    .unwrap();
    let reference = TrmModel::load(dir.join("model.safetensors")).unwrap();
    assert_bit_identical(&converted, &reference);
    // And without dataset.json: no puzzle embedding, so the identifiers
    // default to one; seq_len from the token mixer.
    let inferred = official::convert(
        dir.join("official/step_827"),
        dir.join("official/all_config.yaml"),
        None::<PathBuf>,
    )
    .unwrap();
    assert_bit_identical(&inferred, &reference);
}

/// The converted trained model gives PyTorch's answers (one ACT step, the
/// first 12 sample puzzles).
#[test]
fn sudoku_easy_converted_gives_pytorch_answers() {
    let dir = sudoku_easy();
    let model = official::convert(
        dir.join("official/step_827"),
        dir.join("official/all_config.yaml"),
        Some(dir.join("official/dataset.json")),
    )
    .unwrap();
    let bytes = std::fs::read(dir.join("reference_answers.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<i64> {
        let view = file.tensor(name).unwrap();
        match view.dtype() {
            safetensors::Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I32 => view
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            other => panic!("{name}: {other:?}"),
        }
    };
    let puzzles = 12;
    let inputs = ints("inputs");
    let answers = ints("answer.step1");
    let batch = PuzzleBatch::new(model.config(), &inputs[..puzzles * 81], None).unwrap();
    let mut engine = CpuEngine::new(Arc::new(model)).unwrap();
    let out = engine
        .solve(&batch, &SolveOptions::default().act_steps(1))
        .unwrap();
    let predicted: Vec<i64> = out.predictions().iter().map(|&p| p as i64).collect();
    assert_eq!(predicted, answers[..puzzles * 81]);
}

fn config(mlp_t: bool, pos: PosEncodings, puzzle_emb_ndim: usize) -> TrmConfig {
    TrmConfig {
        seq_len: 10,
        vocab_size: 7,
        num_puzzle_identifiers: 5,
        hidden_size: 16,
        expansion: 2.0,
        num_heads: 2,
        h_cycles: 2,
        l_cycles: 2,
        l_layers: 2,
        h_layers: 0,
        arch: Default::default(),
        halt_max_steps: 3,
        mlp_t,
        pos_encodings: pos,
        puzzle_emb_ndim,
        puzzle_emb_len: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
    }
}

/// Every variant converts bit for bit, with dataset.json or, where the
/// shapes determine the data-set fields, without it.
#[test]
fn every_variant_converts_with_and_without_dataset_json() {
    for (mlp_t, pos, ndim, inferable) in [
        (true, PosEncodings::None, 16, true),
        (true, PosEncodings::None, 0, true),
        (false, PosEncodings::Learned, 24, true),
        (false, PosEncodings::Rope, 16, false),
        (false, PosEncodings::None, 0, false),
    ] {
        let model = TrmModel::random(config(mlp_t, pos, ndim), 11, 0.5).unwrap();
        let step = model_step_file(&model, true);
        let yaml = all_config_yaml(&model);
        let dataset = dataset_json(&model);
        let with = official::convert_bytes(
            step.clone(),
            &yaml,
            Some(&dataset),
            &ConvertOptions::default(),
        )
        .unwrap();
        // bf16 init buffers: compare against the model with those rounded.
        let mut expected = model.named_tensors();
        for (name, t) in &mut expected {
            if name.ends_with("_init") {
                for v in &mut t.data {
                    *v = half::bf16::from_f32(*v).to_f32();
                }
            }
        }
        let expected =
            TrmModel::from_tensors(model.config().clone(), expected, &Default::default()).unwrap();
        assert_bit_identical(&with.model, &expected);

        let without = official::convert_bytes(step, &yaml, None, &ConvertOptions::default());
        match (inferable, without) {
            (true, Ok(conversion)) => {
                let c = conversion.model.config();
                assert_eq!((c.seq_len, c.vocab_size), (10, 7), "{pos:?}");
                let ids = if ndim > 0 { 5 } else { 1 };
                assert_eq!(c.num_puzzle_identifiers, ids);
            }
            (false, Err(TrmError::Config(msg))) => {
                assert!(msg.contains("cannot infer seq_len"), "{msg}");
                assert!(msg.contains(pos.as_str()), "{msg}");
                assert!(msg.contains("dataset.json"), "{msg}");
                assert!(msg.contains("--seq-len"), "{msg}");
            }
            (_, other) => panic!("{mlp_t} {pos:?}: {other:?}"),
        }
    }
}

#[test]
fn explicit_values_complete_what_cannot_be_inferred() {
    let model = TrmModel::random(config(false, PosEncodings::Rope, 16), 5, 0.5).unwrap();
    let step = model_step_file(&model, false);
    let yaml = all_config_yaml(&model);
    let conversion =
        official::convert_bytes(step, &yaml, None, &ConvertOptions::default().seq_len(10)).unwrap();
    assert_eq!(conversion.model.config(), model.config());
}

#[test]
fn missing_vocabulary_tensor_is_named_when_inferring() {
    let model = TrmModel::random(config(true, PosEncodings::None, 16), 5, 0.5).unwrap();
    let (mut tensors, storages) =
        common::torch_save::model_state_dict(&model, common::torch_save::OFFICIAL_PREFIX, false);
    tensors.retain(|t| !t.name.ends_with("embed_tokens.embedding_weight"));
    let step = common::torch_save::torch_zip(
        "step_9",
        &common::torch_save::state_dict_pickle(&tensors),
        &storages,
    );
    let err = official::convert_bytes(
        step,
        &all_config_yaml(&model),
        None,
        &ConvertOptions::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("vocab_size") && msg.contains("embed_tokens"),
        "{msg}"
    );
}

#[test]
fn unknown_arch_fields_are_reported_not_fatal() {
    let model = TrmModel::random(config(true, PosEncodings::None, 16), 5, 0.5).unwrap();
    let yaml = all_config_yaml(&model).replace("arch:\n", "arch:\n  shiny_new_option: 3\n");
    let conversion = official::convert_bytes(
        model_step_file(&model, false),
        &yaml,
        Some(&dataset_json(&model)),
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_eq!(conversion.ignored_fields, vec!["shiny_new_option"]);
}

#[test]
fn load_official_state_dict_reads_every_tensor() {
    let tensors = official::load_official_state_dict(golden_official().join("step_1000")).unwrap();
    assert_eq!(tensors.len(), 15);
    assert!(
        tensors
            .iter()
            .all(|(name, _)| name.starts_with("_orig_mod.model.inner."))
    );
    let (_, h_init) = tensors.iter().find(|(n, _)| n.ends_with("H_init")).unwrap();
    assert_eq!(h_init.shape, vec![64]);
}

/// `trm convert`, then `trm info` and `trm run` on the result reproduce the
/// golden case.
#[test]
fn cli_convert_then_info_and_run() {
    let dir = golden_official();
    let tmp = temp_dir("convert");
    let model_path = tmp.join("model.safetensors");
    let out = trm(&[
        "convert",
        dir.join("step_1000").to_str().unwrap(),
        "--config",
        dir.join("all_config.yaml").to_str().unwrap(),
        "--dataset",
        dir.join("dataset.json").to_str().unwrap(),
        "-o",
        model_path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("398018 parameters"));

    let info = trm(&["info", "-m", model_path.to_str().unwrap(), "--json"]);
    assert!(info.status.success());
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["config"]["hidden_size"], 64);
    assert_eq!(json["state_len"], 97);

    let case = load_case("sudoku_mlp_small");
    let tokens: Vec<i32> = case.tensor("inputs").iter().map(|&v| v as i32).collect();
    let input_path = tmp.join("input.safetensors");
    std::fs::write(
        &input_path,
        safetensors_bytes(&[RawTensor::i32("inputs", vec![3, 81], &tokens)], None),
    )
    .unwrap();
    let output_path = tmp.join("out.safetensors");
    let run = trm(&[
        "run",
        "-m",
        model_path.to_str().unwrap(),
        "-i",
        input_path.to_str().unwrap(),
        "-o",
        output_path.to_str().unwrap(),
        "--steps",
        "2",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (shape, logits) = read_output_f32(&std::fs::read(&output_path).unwrap(), "logits");
    assert_eq!(shape, vec![3, 81, 11]);
    // All 16 steps are checked through the library above; two suffice here.
    assert_close(
        "logits.step2",
        &logits,
        case.tensor("logits.step2"),
        1e-5,
        1e-4,
    );
}

#[test]
fn cli_convert_without_dataset_says_what_it_inferred() {
    let dir = golden_official();
    let tmp = temp_dir("convert-infer");
    let model_path = tmp.join("model.safetensors");
    let out = trm(&[
        "convert",
        dir.join("step_1000").to_str().unwrap(),
        "-c",
        dir.join("all_config.yaml").to_str().unwrap(),
        "-o",
        model_path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("inferred seq_len = 81"), "{stderr}");
    assert!(TrmModel::load(&model_path).is_ok());
}

#[test]
fn cli_convert_names_what_cannot_be_inferred() {
    let model = TrmModel::random(config(false, PosEncodings::Rope, 16), 5, 0.5).unwrap();
    let tmp = temp_dir("convert-rope");
    let step = tmp.join("step_1");
    let yaml = tmp.join("all_config.yaml");
    std::fs::write(&step, model_step_file(&model, true)).unwrap();
    std::fs::write(&yaml, all_config_yaml(&model)).unwrap();
    let out_path = tmp.join("model.safetensors");
    let args = [
        "convert",
        step.to_str().unwrap(),
        "-c",
        yaml.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ];
    let out = trm(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("cannot infer seq_len"),
        "{stderr}"
    );
    assert!(!out_path.exists());
    // --seq-len completes it.
    let mut with_len = args.to_vec();
    with_len.extend(["--seq-len", "10"]);
    let out = trm(&with_len);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converted = TrmModel::load(&out_path).unwrap();
    assert_eq!(converted.config(), model.config());
}

fn golden_hrm_official() -> PathBuf {
    data_dir().join("golden/hrm/hrm_official")
}

/// HRM's `step_2000` (the authors' HRM code, `arch.name`
/// `recursive_reasoning.hrm@...`, no `puzzle_emb_len` in its YAML).
fn convert_step_2000() -> TrmModel {
    let dir = golden_hrm_official();
    official::convert(
        dir.join("step_2000"),
        dir.join("all_config.yaml"),
        Some(dir.join("dataset.json")),
    )
    .unwrap_or_else(|e| panic!("step_2000: {e}"))
}

/// The official HRM checkpoint converts to the golden HRM model bit for
/// bit (arch, H_layers and the puzzle positions read from all_config.yaml),
/// and the converted model reproduces the authors' HRM outputs at every ACT
/// step, carry included.
#[test]
fn hrm_step_2000_converts_and_reproduces_every_act_step() {
    let converted = convert_step_2000();
    let c = converted.config();
    assert_eq!(c.arch, trm_wgpu::Arch::Hrm);
    assert_eq!((c.l_layers, c.h_layers), (2, 2));
    assert_eq!(c.puzzle_emb_positions(), 1);
    let golden = TrmModel::load(data_dir().join("golden/hrm/hrm_sudoku_rope.model.safetensors"))
        .expect("golden HRM model");
    assert_bit_identical(&converted, &golden);
    let case = load_case("hrm/hrm_sudoku_rope");
    let mut engine = CpuEngine::new(Arc::new(converted)).unwrap();
    common::golden::step_by_step(&mut engine, &case, 1e-5, 1e-4);
}

/// Both code bases' HRM names convert, to the same model; an HRM section
/// without H_layers, a name of a model trm-wgpu does not run, and a TRM
/// model with H-level tensors are refused with a clear error.
#[test]
fn hrm_arch_names_of_both_repositories() {
    use common::torch_save::{HRM_ARCH_NAME, HRM_OWN_ARCH_NAME, all_config_yaml_named};
    let config = TrmConfig {
        arch: trm_wgpu::Arch::Hrm,
        l_layers: 1,
        h_layers: 3,
        ..config(false, PosEncodings::Learned, 24)
    };
    let model = TrmModel::random(config, 9, 0.5).unwrap();
    let step = model_step_file(&model, false);
    let dataset = dataset_json(&model);
    for name in [HRM_ARCH_NAME, HRM_OWN_ARCH_NAME] {
        let yaml = all_config_yaml_named(&model, name);
        let conversion =
            official::convert_bytes(step.clone(), &yaml, Some(&dataset), &Default::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_bit_identical(&conversion.model, &model);
        assert!(conversion.ignored_fields.is_empty());
    }
    let convert = |yaml: &str| {
        official::convert_bytes(step.clone(), yaml, Some(&dataset), &Default::default())
            .unwrap_err()
            .to_string()
    };
    let yaml = all_config_yaml(&model);
    let no_h = convert(&yaml.replace("  H_layers: 3\n", ""));
    assert!(no_h.contains("H_layers"), "{no_h}");
    let other = convert(&yaml.replace(HRM_ARCH_NAME, "recursive_reasoning.trm_singlez@X"));
    assert!(
        other.contains("trm_singlez") && other.contains(HRM_OWN_ARCH_NAME),
        "{other}"
    );
    // the HRM checkpoint read as a TRM: its H-level tensors are not TRM's
    let as_trm = yaml
        .replace(HRM_ARCH_NAME, common::torch_save::TRM_ARCH_NAME)
        .replace(
            "  puzzle_emb_ndim",
            "  puzzle_emb_len: 0\n  puzzle_emb_ndim",
        );
    let as_trm = convert(&as_trm);
    assert!(as_trm.contains("H_level"), "{as_trm}");
}

/// `trm convert` of the official HRM checkpoint, `trm info` says HRM, and
/// `trm run` gives the authors' HRM outputs.
#[test]
fn cli_convert_hrm_then_info_and_run() {
    let dir = golden_hrm_official();
    let tmp = temp_dir("convert-hrm");
    let model_path = tmp.join("model.safetensors");
    let out = trm(&[
        "convert",
        dir.join("step_2000").to_str().unwrap(),
        "-c",
        dir.join("all_config.yaml").to_str().unwrap(),
        "-d",
        dir.join("dataset.json").to_str().unwrap(),
        "-o",
        model_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": hrm, "), "{stdout}");

    let info = trm(&["info", "-m", model_path.to_str().unwrap(), "--json"]);
    assert!(info.status.success());
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["arch"], "hrm");
    assert_eq!(json["config"]["arch"], "hrm");
    assert_eq!(json["config"]["H_layers"], 2);
    let text = trm(&["info", "-m", model_path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("arch            hrm") && text.contains("H_layers 2"),
        "{text}"
    );

    let case = load_case("hrm/hrm_sudoku_rope");
    let int32 = |name: &str| -> Vec<i32> { case.tensor(name).iter().map(|&v| v as i32).collect() };
    let input_path = tmp.join("input.safetensors");
    std::fs::write(
        &input_path,
        safetensors_bytes(
            &[
                RawTensor::i32("inputs", vec![3, 81], &int32("inputs")),
                RawTensor::i32("puzzle_identifiers", vec![3], &int32("puzzle_identifiers")),
            ],
            None,
        ),
    )
    .unwrap();
    let output_path = tmp.join("out.safetensors");
    let run = trm(&[
        "run",
        "-m",
        model_path.to_str().unwrap(),
        "-i",
        input_path.to_str().unwrap(),
        "-o",
        output_path.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&output_path).unwrap();
    let (shape, logits) = read_output_f32(&bytes, "logits");
    assert_eq!(shape, vec![3, 81, 11]);
    assert_close(
        "logits.step4",
        &logits,
        case.tensor("logits.step4"),
        1e-5,
        1e-4,
    );
    assert_close(
        "z_H",
        &read_output_f32(&bytes, "z_H").1,
        case.tensor("z_H"),
        1e-5,
        1e-4,
    );
}
