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
    arc_model(dir, 0xA11C, "arc-model.safetensors")
}

/// [`random_arc_model`]'s configuration with weights drawn from `seed`,
/// saved as `name` in `dir`.
fn arc_model(dir: &Path, seed: u64, name: &str) -> PathBuf {
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
    let model = TrmModel::random(config, seed, 0.5).unwrap();
    let path = dir.join(name);
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
    AnswerLog::replay(path, 108, |a| {
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
    let mut log = AnswerLog::open(&path, 50, &common::test_log_header(), |_| Ok(())).unwrap();
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
    let mut log = AnswerLog::open(&path, 108, &common::test_log_header(), |_| Ok(())).unwrap();
    log.append(&[answer.clone(), answer.clone()]).unwrap();
    drop(log);
    log_error(&std::fs::read(&path).unwrap(), "answers example 3 twice");
    // a record whose identifier is not the data set's: another data set
    let path = dir.join("other-ids.answers");
    let mut log = AnswerLog::open(&path, 108, &common::test_log_header(), |_| Ok(())).unwrap();
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

/// `trm arc-eval` with `args`: its stdout, after checking it succeeded.
fn arc_eval(args: &[&str]) -> String {
    stdout(&trm(args))
}

/// The arguments of a model run over the first three puzzles (27
/// examples) into the answer log `log`.
fn three_puzzles<'a>(data: &'a Path, model: &'a Path, log: &'a Path) -> Vec<&'a str> {
    vec![
        "arc-eval",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--answers",
        log.to_str().unwrap(),
        "--limit",
        "3",
        "--batch",
        "5",
        "--backend",
        "cpu",
    ]
}

/// Issue 30's done-when: two `--shard` runs voted together print exactly
/// what one unsharded run prints, and write the same submission.
#[test]
fn two_shards_voted_together_print_what_one_run_prints() {
    let dir = temp_dir("arc-shards");
    let model = random_arc_model(&dir);
    let data = data();
    let whole = dir.join("whole.answers");
    let whole_submission = dir.join("whole.json");
    let mut args = three_puzzles(&data, &model, &whole);
    args.extend(["--submission", whole_submission.to_str().unwrap()]);
    let printed = arc_eval(&args);
    assert!(printed.starts_with("ARC/pass@1: "), "{printed}");

    let shards = [dir.join("shard0.answers"), dir.join("shard1.answers")];
    for (k, log) in shards.iter().enumerate() {
        let shard = format!("{k}/2");
        let mut args = three_puzzles(&data, &model, log);
        args.extend(["--shard", shard.as_str()]);
        // a share prints no pass@k: it has answered only part of each vote
        assert_eq!(arc_eval(&args), "", "shard {shard}");
    }
    // the 27 examples split 13 + 14, the cut inside the second puzzle's
    let (first, second) = (logged(&shards[0]), logged(&shards[1]));
    assert_eq!((first.len(), second.len()), (13, 14));
    let mut both: Vec<arc::Answer> = first.into_iter().chain(second).collect();
    both.sort_by_key(|a| a.example);
    assert_eq!(both, logged(&whole));

    // voted together (in either order) they print what the one run printed
    let voted_submission = dir.join("voted.json");
    for (a, b) in [(0, 1), (1, 0)] {
        let voted = arc_eval(&[
            "arc-eval",
            "--data",
            data.to_str().unwrap(),
            "--answers",
            shards[a].to_str().unwrap(),
            "--answers",
            shards[b].to_str().unwrap(),
            "--limit",
            "3",
            "--submission",
            voted_submission.to_str().unwrap(),
        ]);
        assert_eq!(voted, printed);
        assert_eq!(
            std::fs::read(&voted_submission).unwrap(),
            std::fs::read(&whole_submission).unwrap()
        );
    }
    // and the same JSON as the whole log voted alone
    let json = |logs: &[&Path]| {
        let mut args = vec!["arc-eval", "--data", data.to_str().unwrap()];
        for log in logs {
            args.extend(["--answers", log.to_str().unwrap()]);
        }
        args.extend(["--limit", "3", "--json"]);
        arc_eval(&args)
    };
    assert_eq!(json(&[&shards[0], &shards[1]]), json(&[&whole]));
}

/// The first format's log (`TRMARCA1`, no header JSON) of the answers in
/// `log`.
fn first_format_copy(log: &Path, to: &Path) {
    let bytes = std::fs::read(log).unwrap();
    let json_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    let mut old = b"TRMARCA1".to_vec();
    old.extend_from_slice(&bytes[8..24]);
    old.extend_from_slice(&0u64.to_le_bytes());
    old.extend_from_slice(&bytes[32 + json_len..]);
    std::fs::write(to, old).unwrap();
}

/// Issue 29: a log records the model and settings that wrote it; resuming
/// it with another model, other settings or another share is refused, and
/// so is voting logs of different runs together.
#[test]
fn a_resumed_answer_log_of_another_model_or_settings_is_refused() {
    let dir = temp_dir("arc-log-header");
    let model = random_arc_model(&dir);
    let data = data();
    let log = dir.join("shard0.answers");
    let one_puzzle = |model: &Path, extra: &[&str]| {
        let mut args = vec![
            "arc-eval",
            "--data",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--answers",
            log.to_str().unwrap(),
            "--limit",
            "1",
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        trm(&args)
    };
    assert!(one_puzzle(&model, &["--shard", "0/2"]).status.success());
    let written = std::fs::read(&log).unwrap();
    let header = AnswerLog::header(&log, 108).unwrap().unwrap();
    assert_eq!(header.shard, Some("0/2".parse().unwrap()));
    assert_eq!(header.settings.act_steps, 2);
    assert_eq!(header.settings.precision, "f32");
    assert_eq!(
        header.settings.model_sha256,
        trm_wgpu::shard::file_sha256(&model).unwrap()
    );

    // another model: the same configuration, other weights
    let other = arc_model(&dir, 0xB0B, "other.safetensors");
    assert_one_error_line(
        &one_puzzle(&other, &["--shard", "0/2"]),
        "was written by another model or other settings than this run: model_sha256",
    );
    assert_one_error_line(
        &one_puzzle(&model, &["--shard", "0/2", "--steps", "1"]),
        "act_steps 1 vs 2",
    );
    assert_one_error_line(
        &one_puzzle(&model, &["--shard", "0/2", "--precision", "bf16"]),
        "precision \"bf16\" vs \"f32\"",
    );
    assert_one_error_line(
        &one_puzzle(&model, &["--shard", "0/2", "--halt"]),
        "early_halt true vs false",
    );
    assert_one_error_line(
        &one_puzzle(&model, &["--shard", "1/2"]),
        "holds the answers of shard 0/2, this run answers shard 1/2",
    );
    assert_one_error_line(&one_puzzle(&model, &[]), "this run answers shard all");
    // a refused resume leaves the log as it was
    assert_eq!(std::fs::read(&log).unwrap(), written);
    // the same run resumes (nothing left to answer)
    let resumed = one_puzzle(&model, &["--shard", "0/2"]);
    assert!(resumed.status.success());
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming: 4 of 4"));

    // voting: logs of different models, the same log twice
    let other_log = dir.join("other.answers");
    let out = trm(&[
        "arc-eval",
        "--data",
        data.to_str().unwrap(),
        "--model",
        other.to_str().unwrap(),
        "--answers",
        other_log.to_str().unwrap(),
        "--limit",
        "1",
        "--shard",
        "1/2",
    ]);
    assert!(out.status.success());
    let vote = |logs: &[&Path]| {
        let mut args = vec!["arc-eval", "--data", data.to_str().unwrap()];
        for log in logs {
            args.extend(["--answers", log.to_str().unwrap()]);
        }
        trm(&args)
    };
    assert_one_error_line(
        &vote(&[&log, &other_log]),
        "was written by another model or other settings than",
    );
    assert_one_error_line(&vote(&[&log, &log]), "is answered in both");

    // a log of the first format: voted alone as before, never resumed nor
    // voted with others (nothing says what wrote it)
    let old = dir.join("old.answers");
    first_format_copy(&log, &old);
    assert!(AnswerLog::header(&old, 108).unwrap().is_none());
    let alone = vote(&[&old]);
    assert_eq!(stdout(&alone), stdout(&vote(&[&log])));
    assert_one_error_line(&vote(&[&old, &other_log]), "can only be voted alone");
    let out = trm(&[
        "arc-eval",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--answers",
        old.to_str().unwrap(),
        "--limit",
        "1",
    ]);
    assert_one_error_line(&out, "of the first format");
}

#[test]
fn bad_shards_are_refused() {
    let data = data();
    let model = fixture().join("no-model.safetensors");
    let log = temp_dir("arc-bad-shard").join("log");
    let run = |shard: &str| {
        trm(&[
            "arc-eval",
            "--data",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--answers",
            log.to_str().unwrap(),
            "--shard",
            shard,
        ])
    };
    for (shard, needle) in [
        ("2/2", "0 <= K < N"),
        ("0/0", "N >= 1"),
        ("1", "expected K/N"),
        ("a/b", "expected K/N"),
    ] {
        let out = run(shard);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{shard}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // a shard without its own log: its answers would be lost
    let out = trm(&[
        "arc-eval",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--shard",
        "0/2",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--answers"));
}
