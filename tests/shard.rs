//! `trm run --shard K/N` and `trm merge`: the shares of a run merged are
//! the whole run's output, byte for byte; shares of different runs, a
//! missing or repeated share, and runs whose answers depend on a puzzle's
//! position are refused with one clear line.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_one_error_line, temp_dir, trm};
use trm_wgpu::{PosEncodings, SolveOutput, TrmConfig, TrmModel};

fn config() -> TrmConfig {
    TrmConfig {
        seq_len: 9,
        vocab_size: 5,
        num_puzzle_identifiers: 4,
        hidden_size: 8,
        expansion: 2.0,
        num_heads: 2,
        h_cycles: 2,
        l_cycles: 2,
        l_layers: 1,
        h_layers: 0,
        arch: Default::default(),
        halt_max_steps: 4,
        mlp_t: false,
        pos_encodings: PosEncodings::Rope,
        puzzle_emb_ndim: 8,
        puzzle_emb_len: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
    }
}

/// A random model and an input of `puzzles` puzzles in a new directory.
fn case(tag: &str, puzzles: usize) -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let seed = common::test_seed();
    let model = TrmModel::random(config(), seed, 0.5).unwrap();
    let (model, input, _) = common::write_run_case(&dir, &model, puzzles, seed ^ 0x5a4d);
    (dir, model, input)
}

fn run(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--backend",
        "cpu",
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    trm(&args)
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the `n` shares of a run into `dir`, returning their outputs in
/// shard order.
fn shards(dir: &Path, model: &Path, input: &Path, n: usize, extra: &[&str]) -> Vec<PathBuf> {
    (0..n)
        .map(|k| {
            let output = dir.join(format!("shard{k}.safetensors"));
            let shard = format!("{k}/{n}");
            let mut args = extra.to_vec();
            args.extend(["--shard", shard.as_str()]);
            ok(run(model, input, &output, &args));
            output
        })
        .collect()
}

fn merge(shards: &[&Path], output: &Path) -> std::process::Output {
    let mut args = vec!["merge", "-o", output.to_str().unwrap()];
    args.extend(shards.iter().map(|p| p.to_str().unwrap()));
    trm(&args)
}

#[test]
fn merged_shares_are_the_whole_run_byte_for_byte() {
    let (dir, model, input) = case("shard-merge", 7);
    for extra in [
        &[][..],
        &["--halt", "--slots", "2"],
        &["--batch", "2", "--steps", "2"],
    ] {
        let whole = dir.join("whole.safetensors");
        ok(run(&model, &input, &whole, extra));
        let parts = shards(&dir, &model, &input, 3, extra);
        // each share holds its puzzles: 7 = 2 + 2 + 3
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| SolveOutput::load(p).unwrap().batch)
            .collect();
        assert_eq!(sizes, [2, 2, 3], "{extra:?}");
        // merged in any order of the arguments
        let merged = dir.join("merged.safetensors");
        let out = ok(merge(&[&parts[2], &parts[0], &parts[1]], &merged));
        assert!(String::from_utf8_lossy(&out.stderr).contains("merged 3 shards: 7 puzzles"));
        assert_eq!(
            std::fs::read(&merged).unwrap(),
            std::fs::read(&whole).unwrap(),
            "{extra:?}: the merged shares differ from the whole run"
        );
        // and read back in order, the shares are the whole run's rows
        let whole = SolveOutput::load(&whole).unwrap();
        let mut joined = SolveOutput::load(&parts[0]).unwrap();
        for part in &parts[1..] {
            joined.append(SolveOutput::load(part).unwrap()).unwrap();
        }
        assert_eq!(joined, whole, "{extra:?}");
    }
}

#[test]
fn merges_of_other_runs_or_incomplete_sets_are_refused() {
    let (dir, model, input) = case("shard-refused", 5);
    let parts = shards(&dir, &model, &input, 2, &[]);
    let merged = dir.join("merged.safetensors");
    assert_one_error_line(&merge(&[&parts[0]], &merged), "shards 1/2 are missing");
    assert_one_error_line(
        &merge(&[&parts[0], &parts[1], &parts[0]], &merged),
        "shard 0/2 is given twice",
    );
    // the same share of a run with other settings, or of another model
    let steps = dir.join("steps.safetensors");
    ok(run(
        &model,
        &input,
        &steps,
        &["--shard", "1/2", "--steps", "2"],
    ));
    assert_one_error_line(&merge(&[&parts[0], &steps], &merged), "act_steps 4 vs 2");
    let other_model = dir.join("other.safetensors");
    TrmModel::random(config(), 99, 0.5)
        .unwrap()
        .save(&other_model)
        .unwrap();
    let other = dir.join("other-out.safetensors");
    ok(run(&other_model, &input, &other, &["--shard", "1/2"]));
    assert_one_error_line(&merge(&[&parts[0], &other], &merged), "model_sha256");
    // shares of another split
    let third = dir.join("third.safetensors");
    ok(run(&model, &input, &third, &["--shard", "1/3"]));
    assert_one_error_line(
        &merge(&[&parts[0], &third], &merged),
        "shares of different splits",
    );
    // an output of a run without --shard
    let whole = dir.join("whole.safetensors");
    ok(run(&model, &input, &whole, &[]));
    assert_one_error_line(
        &merge(&[&whole], &merged),
        "is not the output of a `trm run --shard",
    );
    assert!(!merged.exists());
}

#[test]
fn shards_of_runs_that_depend_on_position_or_that_hold_nothing_are_refused() {
    let (dir, model, input) = case("shard-bad", 2);
    let output = dir.join("out.safetensors");
    // a share of 2 puzzles among 3 shards can be empty
    assert_one_error_line(
        &run(&model, &input, &output, &["--shard", "0/3"]),
        "shard 0/3 of 2 puzzles holds none",
    );
    for (shard, needle) in [("3/3", "0 <= K < N"), ("x", "expected K/N")] {
        let out = run(&model, &input, &output, &["--shard", shard]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{stderr}");
    }
    // the variants and the noise are drawn by each puzzle's position
    let out = run(
        &model,
        &input,
        &output,
        &["--shard", "0/2", "--trajectories", "2", "--noise", "0.1"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    assert!(!output.exists());
}
