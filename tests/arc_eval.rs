//! ARC evaluation: the authors' evaluator reproduced exactly on the fixture
//! their own builder and evaluator made (`tests/data/arc`: pass@k and the
//! submission file byte for byte), a random model answering the fixture's
//! data set on the CPU and on the GPU with the same answers, a run resumed
//! from its answer log, and bad data sets refused with one clear line.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_one_error_line, temp_dir, trm, trm_env};
use ndarray::{Array1, Array2};
use ndarray_npy::WriteNpyExt;
use trm_wgpu::arc::{self, AnswerLog, ArcDataset, Predictions};
use trm_wgpu::{CpuEngine, PosEncodings, SolveOptions, TrmConfig, TrmModel};

fn fixture() -> PathBuf {
    common::data_dir().join("arc")
}

fn data() -> PathBuf {
    fixture().join("data")
}

fn expected_results() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["results"].clone()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "trm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn the_fixture_data_set_reads() {
    let dataset = ArcDataset::open(data()).unwrap();
    assert_eq!(dataset.len(), 108);
    assert_eq!(dataset.puzzles().len(), 12);
    assert_eq!(dataset.identifiers().len(), 109);
    assert_eq!(dataset.metadata().num_puzzle_identifiers, 109);
    // every example's input, mapped back, is one of its puzzle's test inputs
    for i in 0..dataset.len() {
        let example = dataset.example(i).unwrap();
        let name = &dataset.identifiers()[example.puzzle_identifier as usize];
        let (original, aug) = arc::Augmentation::parse_name(name).unwrap();
        let input = aug.invert(&arc::Grid::crop(&example.tokens).unwrap());
        let puzzle = dataset
            .puzzles()
            .iter()
            .find(|p| p.name == original)
            .unwrap();
        assert!(
            puzzle.tests.iter().any(|t| t.input == input),
            "example {i} ({name})"
        );
    }
    assert!(dataset.example(108).is_err());
    assert_eq!(dataset.selected_examples(Some(2)).len(), 18);
}

#[test]
fn the_authors_pass_at_k_and_submission_from_their_predictions() {
    let dataset = ArcDataset::open(data()).unwrap();
    let preds = Predictions::open(fixture().join("predictions.safetensors")).unwrap();
    let mut voter = arc::voter_for(&dataset, None).unwrap();
    for i in 0..preds.len() {
        let (id, input, pred, q) = preds.get(i).unwrap();
        voter.add(id, &input, &pred, q).unwrap();
    }
    let results = voter.results(&arc::DEFAULT_PASS_KS);
    let expected = expected_results();
    for (k, v) in &results.pass_at {
        let want = expected[format!("ARC/pass@{k}")].as_f64().unwrap();
        assert_eq!(*v, want, "pass@{k}");
    }
    let submission = std::fs::read_to_string(fixture().join("submission.json")).unwrap();
    assert_eq!(results.submission.to_json(), submission);
    assert_eq!(results.answers, 108);
    assert!(results.without_answers.is_empty());
}

/// The second fixture (`tests/data/arc-random`, made by
/// `bench/arc_fixture.py`): random puzzles, several test inputs, some
/// without any prediction.
#[test]
fn arc_eval_matches_the_authors_on_a_second_fixture() {
    let fixture = common::data_dir().join("arc-random");
    let dir = temp_dir("arc-random");
    let submission = dir.join("submission.json");
    let out = trm(&[
        "arc-eval",
        "--data",
        fixture.join("data").to_str().unwrap(),
        "--predictions",
        fixture.join("predictions.safetensors").to_str().unwrap(),
        "--submission",
        submission.to_str().unwrap(),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let text = std::fs::read_to_string(fixture.join("expected.json")).unwrap();
    let expected = serde_json::from_str::<serde_json::Value>(&text).unwrap()["results"].clone();
    assert_eq!(json, expected);
    assert_eq!(
        std::fs::read(&submission).unwrap(),
        std::fs::read(fixture.join("submission.json")).unwrap()
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("without an answer"));
}

#[test]
fn arc_eval_predictions_json_is_the_authors_result() {
    let dir = temp_dir("arc-preds");
    let submission = dir.join("submission.json");
    let out = trm(&[
        "arc-eval",
        "--data",
        data().to_str().unwrap(),
        "--predictions",
        fixture().join("predictions.safetensors").to_str().unwrap(),
        "--submission",
        submission.to_str().unwrap(),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json, expected_results());
    assert_eq!(
        std::fs::read(&submission).unwrap(),
        std::fs::read(fixture().join("submission.json")).unwrap()
    );
    // --pass-k and --limit: the first 3 puzzles only, keys in the order asked
    let out = trm(&[
        "arc-eval",
        "--data",
        data().to_str().unwrap(),
        "--predictions",
        fixture().join("predictions.safetensors").to_str().unwrap(),
        "--pass-k",
        "2,1",
        "--limit",
        "3",
        "--json",
    ]);
    let text = stdout(&out);
    assert!(text.starts_with("{\"ARC/pass@2\":"), "{text}");
    let json: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(json.as_object().unwrap().len(), 2);
}

/// A random attention model whose puzzle table matches the fixture's
/// identifiers: it answers the data set (its answers are noise; the point is
/// that every engine gives the same ones).
fn random_arc_model(dir: &Path) -> PathBuf {
    let config = TrmConfig {
        seq_len: 900,
        vocab_size: 12,
        num_puzzle_identifiers: 109,
        hidden_size: 8,
        expansion: 2.0,
        num_heads: 1,
        h_cycles: 1,
        l_cycles: 1,
        l_layers: 1,
        halt_max_steps: 2,
        mlp_t: false,
        pos_encodings: PosEncodings::Rope,
        puzzle_emb_ndim: 8,
        puzzle_emb_len: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        h_layers: 0,
        arch: Default::default(),
    };
    let model = TrmModel::random(config, 0xA11C, 0.5).unwrap();
    let path = dir.join("arc-model.safetensors");
    model.save(&path).unwrap();
    path
}

fn model_run(
    model: &Path,
    answers: &Path,
    limit: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let data = data();
    let mut args = vec![
        "arc-eval",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--answers",
        answers.to_str().unwrap(),
        "--limit",
        limit,
        "--batch",
        "7",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = trm_env(&args, env);
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

fn logged(path: &Path) -> Vec<arc::Answer> {
    let mut answers = Vec::new();
    AnswerLog::open(path, 108, |a| {
        answers.push(a);
        Ok(())
    })
    .unwrap();
    answers.sort_by_key(|a| a.example);
    answers
}

#[test]
fn a_model_answers_the_data_set_and_a_run_resumes() {
    let dir = temp_dir("arc-model");
    let model = random_arc_model(&dir);

    // the library path: every example of the first puzzle, as a direct solve
    let dataset = ArcDataset::open(data()).unwrap();
    let loaded = std::sync::Arc::new(TrmModel::load(&model).unwrap());
    let mut engine = CpuEngine::with_threads(loaded.clone(), 2).unwrap();
    let examples = dataset.selected_examples(Some(1));
    let mut answers = Vec::new();
    arc::answer_examples(
        &mut engine,
        &dataset,
        &examples,
        5,
        &SolveOptions::default(),
        |a| {
            answers.extend_from_slice(a);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(answers.len(), examples.len());
    let first = dataset.example(examples[0]).unwrap();
    let tokens: Vec<i64> = first.tokens.iter().map(|&t| i64::from(t)).collect();
    let batch = trm_wgpu::PuzzleBatch::new(
        loaded.config(),
        &tokens,
        Some(&[i64::from(first.puzzle_identifier)]),
    )
    .unwrap();
    let direct = trm_wgpu::Engine::solve(&mut engine, &batch, &SolveOptions::default()).unwrap();
    let direct_tokens: Vec<u8> = direct.predictions().iter().map(|&t| t as u8).collect();
    assert_eq!(answers[0].tokens, direct_tokens);
    assert_eq!(answers[0].q_halt_logit, direct.q_halt_logits[0]);

    // the CLI on the CPU: all of two puzzles at once ...
    let whole = dir.join("whole.answers");
    let cpu = model_run(&model, &whole, "2", &["--backend", "cpu"], &[]);
    // ... and the same in two runs: one puzzle, then a resumed second, after
    // a crash left half a record at the end of the log
    let split = dir.join("split.answers");
    model_run(&model, &split, "1", &["--backend", "cpu"], &[]);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&split)
        .unwrap();
    std::io::Write::write_all(&mut file, &[7u8; 100]).unwrap();
    drop(file);
    let resumed = model_run(&model, &split, "2", &["--backend", "cpu"], &[]);
    assert_eq!(resumed, cpu);
    assert_eq!(logged(&split), logged(&whole));
    assert_eq!(logged(&whole).len(), 18);
    // the vote over the log alone gives the same
    let out = trm(&[
        "arc-eval",
        "--data",
        data().to_str().unwrap(),
        "--answers",
        whole.to_str().unwrap(),
        "--limit",
        "2",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json, cpu);

    // the GPU (NaN-poisoned buffers) gives the same answers
    if common::gpu::context().is_none() {
        return;
    }
    let gpu_log = dir.join("gpu.answers");
    let gpu = model_run(
        &model,
        &gpu_log,
        "2",
        &["--backend", "vulkan"],
        &[("TRM_POISON_GPU", "1")],
    );
    assert_eq!(gpu, cpu);
    for (g, c) in logged(&gpu_log).iter().zip(logged(&whole)) {
        assert_eq!(g.example, c.example);
        assert_eq!(g.tokens, c.tokens, "example {}", c.example);
        let dq = (g.q_halt_logit - c.q_halt_logit).abs();
        assert!(
            dq <= 1e-4 * (1.0 + c.q_halt_logit.abs()),
            "example {}: {dq}",
            c.example
        );
    }
}

/// A writable copy of the fixture's data set, to break.
fn broken_copy(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    };
    copy(&data(), &dir);
    copy(&data().join("test"), &dir.join("test"));
    dir
}

fn eval_error(dir: &Path, needle: &str) {
    let out = trm(&[
        "arc-eval",
        "--data",
        dir.to_str().unwrap(),
        "--predictions",
        fixture().join("predictions.safetensors").to_str().unwrap(),
    ]);
    assert_one_error_line(&out, needle);
}

fn write_npy_i32(path: &Path, values: Vec<i32>) {
    let file = std::fs::File::create(path).unwrap();
    Array1::from(values).write_npy(file).unwrap();
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_string(&value).unwrap()).unwrap();
}

#[test]
fn bad_data_sets_are_refused() {
    let dir = broken_copy("arc-missing");
    std::fs::remove_file(dir.join("test/dataset.json")).unwrap();
    eval_error(&dir, "dataset.json");

    let dir = broken_copy("arc-seq");
    edit_json(&dir.join("test/dataset.json"), |v| v["seq_len"] = 81.into());
    eval_error(&dir, "seq_len is 81");

    let dir = broken_copy("arc-count");
    edit_json(&dir.join("test/dataset.json"), |v| {
        v["num_puzzle_identifiers"] = 200.into()
    });
    eval_error(&dir, "dataset.json counts 200");

    let dir = broken_copy("arc-dtype");
    let file = std::fs::File::create(dir.join("test/all__inputs.npy")).unwrap();
    Array2::<i32>::zeros((108, 900)).write_npy(file).unwrap();
    eval_error(&dir, "not a uint8 [N, 900] array");

    let dir = broken_copy("arc-width");
    let file = std::fs::File::create(dir.join("test/all__inputs.npy")).unwrap();
    Array2::<u8>::zeros((108, 81)).write_npy(file).unwrap();
    eval_error(&dir, "rows of 900 tokens");

    let dir = broken_copy("arc-truncated");
    let path = dir.join("test/all__inputs.npy");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 900]).unwrap();
    eval_error(&dir, "all__inputs.npy");

    let dir = broken_copy("arc-header");
    std::fs::write(
        dir.join("test/all__inputs.npy"),
        b"\x93NUMPY\x01\x00garbage",
    )
    .unwrap();
    eval_error(&dir, "all__inputs.npy");

    let dir = broken_copy("arc-ids");
    let mut ids: Vec<i32> = (1..=108).collect();
    ids[5] = 109;
    write_npy_i32(&dir.join("test/all__puzzle_identifiers.npy"), ids);
    eval_error(&dir, "identifier 109, outside 0..109");

    let dir = broken_copy("arc-negative-id");
    let mut ids: Vec<i32> = (1..=108).collect();
    ids[0] = -3;
    write_npy_i32(&dir.join("test/all__puzzle_identifiers.npy"), ids);
    eval_error(&dir, "identifier -3");

    let dir = broken_copy("arc-offsets");
    let mut offsets: Vec<i32> = (0..=108).collect();
    offsets[108] = 107;
    write_npy_i32(&dir.join("test/all__puzzle_indices.npy"), offsets);
    eval_error(&dir, "end at 107, but there are 108 examples");

    let dir = broken_copy("arc-decreasing");
    let mut offsets: Vec<i32> = (0..=108).collect();
    offsets[50] = 60;
    write_npy_i32(&dir.join("test/all__puzzle_indices.npy"), offsets);
    eval_error(&dir, "is below offset 50");

    let dir = broken_copy("arc-groups");
    write_npy_i32(&dir.join("test/all__group_indices.npy"), vec![0, 5, 3, 108]);
    eval_error(&dir, "all__group_indices.npy");

    let dir = broken_copy("arc-name");
    edit_json(&dir.join("identifiers.json"), |v| {
        v[3] = "a3f84088|||t9|||0148923675".into()
    });
    eval_error(&dir, "identifier 3");

    let dir = broken_copy("arc-perm");
    edit_json(&dir.join("identifiers.json"), |v| {
        v[3] = "a3f84088|||t6|||0148923671".into()
    });
    eval_error(&dir, "repeats a colour");

    let dir = broken_copy("arc-grid");
    edit_json(&dir.join("test_puzzles.json"), |v| {
        let first = v.as_object_mut().unwrap().values_mut().next().unwrap();
        first["test"][0]["output"][0][0] = 10.into();
    });
    eval_error(&dir, "not a colour 0..=9");

    let dir = broken_copy("arc-ragged");
    edit_json(&dir.join("test_puzzles.json"), |v| {
        let first = v.as_object_mut().unwrap().values_mut().next().unwrap();
        first["test"][0]["input"][1] = serde_json::json!([1]);
    });
    eval_error(&dir, "not a rectangle");

    let dir = broken_copy("arc-no-tests");
    edit_json(&dir.join("test_puzzles.json"), |v| {
        let first = v.as_object_mut().unwrap().values_mut().next().unwrap();
        first["test"] = serde_json::json!([]);
    });
    eval_error(&dir, "has no test inputs");

    let dir = broken_copy("arc-not-json");
    std::fs::write(dir.join("test_puzzles.json"), "{\"a\": [").unwrap();
    eval_error(&dir, "test_puzzles.json");
}

#[test]
fn bad_predictions_and_answer_logs_are_refused() {
    let dir = temp_dir("arc-bad-preds");
    let eval = |preds: &Path, needle: &str| {
        let out = trm(&[
            "arc-eval",
            "--data",
            data().to_str().unwrap(),
            "--predictions",
            preds.to_str().unwrap(),
        ]);
        assert_one_error_line(&out, needle);
    };
    let n = 4;
    let grid = vec![2i32; n * 900];
    let ids = vec![1i32; n];
    let q = vec![0.5f32; n];
    let write = |name: &str, tensors: Vec<common::RawTensor>| {
        let path = dir.join(name);
        std::fs::write(&path, common::safetensors_bytes(&tensors, None)).unwrap();
        path
    };
    use common::RawTensor;
    let missing = write(
        "missing.safetensors",
        vec![
            RawTensor::i32("inputs", vec![n, 900], &grid),
            RawTensor::i32("preds", vec![n, 900], &grid),
            RawTensor::i32("puzzle_identifiers", vec![n], &ids),
        ],
    );
    eval(&missing, "no tensor `q_halt_logits`");
    let shape = write(
        "shape.safetensors",
        vec![
            RawTensor::i32("inputs", vec![n, 900], &grid),
            RawTensor::i32("preds", vec![n, 450], &grid[..n * 450]),
            RawTensor::i32("puzzle_identifiers", vec![n], &ids),
            RawTensor::f32("q_halt_logits", vec![n], &q),
        ],
    );
    eval(&shape, "`preds` has shape [4, 450]");
    let bad_id = write(
        "id.safetensors",
        vec![
            RawTensor::i32("inputs", vec![n, 900], &grid),
            RawTensor::i32("preds", vec![n, 900], &grid),
            RawTensor::i32("puzzle_identifiers", vec![n], &[1, 2, 500, 1]),
            RawTensor::f32("q_halt_logits", vec![n], &q),
        ],
    );
    eval(
        &bad_id,
        "prediction 2: puzzle identifier 500 is outside 0..109",
    );
    let nan = write(
        "nan.safetensors",
        vec![
            RawTensor::i32("inputs", vec![n, 900], &grid),
            RawTensor::i32("preds", vec![n, 900], &grid),
            RawTensor::i32("puzzle_identifiers", vec![n], &ids),
            RawTensor::f32("q_halt_logits", vec![n], &[0.0, f32::NAN, 0.0, 0.0]),
        ],
    );
    eval(
        &nan,
        "prediction 1: an answer to `a3f84088` has a NaN q_halt logit",
    );
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a file at all").unwrap();
    eval(&garbage, "not a valid safetensors file");

    // answer logs: not one, of another data set, a record answering twice
    let log_error = |bytes: &[u8], needle: &str| {
        let path = dir.join("bad.answers");
        std::fs::write(&path, bytes).unwrap();
        let out = trm(&[
            "arc-eval",
            "--data",
            data().to_str().unwrap(),
            "--answers",
            path.to_str().unwrap(),
        ]);
        assert_one_error_line(&out, needle);
    };
    log_error(
        b"hello world, this is not a log at all",
        "not an answer log",
    );
    let path = dir.join("other.answers");
    let mut log = AnswerLog::open(&path, 50, |_| Ok(())).unwrap();
    let answer = arc::Answer {
        example: 3,
        puzzle_identifier: 4,
        q_halt_logit: 0.0,
        steps: 1,
        tokens: vec![2; 900],
    };
    log.append(std::slice::from_ref(&answer)).unwrap();
    drop(log);
    log_error(&std::fs::read(&path).unwrap(), "a data set of 50 examples");
    let path = dir.join("twice.answers");
    let mut log = AnswerLog::open(&path, 108, |_| Ok(())).unwrap();
    log.append(&[answer.clone(), answer.clone()]).unwrap();
    drop(log);
    log_error(&std::fs::read(&path).unwrap(), "answers example 3 twice");
    // a record whose identifier is not the data set's: another data set
    let path = dir.join("other-ids.answers");
    let mut log = AnswerLog::open(&path, 108, |_| Ok(())).unwrap();
    log.append(&[arc::Answer {
        puzzle_identifier: 0,
        ..answer
    }])
    .unwrap();
    drop(log);
    log_error(
        &std::fs::read(&path).unwrap(),
        "answers of another data set",
    );
}

#[test]
fn a_model_that_does_not_fit_the_data_set_is_refused() {
    let dir = temp_dir("arc-misfit");
    let config = TrmConfig {
        seq_len: 900,
        vocab_size: 12,
        num_puzzle_identifiers: 50,
        hidden_size: 8,
        num_heads: 1,
        halt_max_steps: 1,
        puzzle_emb_ndim: 8,
        ..TrmConfig::sudoku_extreme()
    };
    let path = dir.join("small-table.safetensors");
    TrmModel::random(config.clone(), 1, 0.5)
        .unwrap()
        .save(&path)
        .unwrap();
    let out = trm(&[
        "arc-eval",
        "--data",
        data().to_str().unwrap(),
        "--model",
        path.to_str().unwrap(),
    ]);
    assert_one_error_line(&out, "puzzle-embedding table has 50 rows");
    let sudoku = dir.join("sudoku.safetensors");
    let config = TrmConfig {
        hidden_size: 8,
        num_heads: 1,
        puzzle_emb_ndim: 8,
        ..TrmConfig::sudoku_extreme()
    };
    TrmModel::random(config, 1, 0.5)
        .unwrap()
        .save(&sudoku)
        .unwrap();
    let out = trm(&[
        "arc-eval",
        "--data",
        data().to_str().unwrap(),
        "--model",
        sudoku.to_str().unwrap(),
    ]);
    assert_one_error_line(&out, "its seq_len is 81");
}
