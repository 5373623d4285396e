//! The examples end to end, as a newcomer runs them: on the CPU, on Vulkan
//! (lavapipe in CI) and on GL (llvmpipe through headless EGL), checking
//! what they print. `cargo test` builds the examples beside the tests.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use safetensors::SafeTensors;

/// A built example: `target/<profile>/examples/<name>`, beside this test's
/// `target/<profile>/deps/`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test` (which builds the examples)",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> Output {
    run_env(name, args, &[])
}

/// [`run`] with `env` set too.
fn run_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(example(name))
        .args(args)
        .envs(env.iter().copied())
        .env("NODEVICE_SELECT", "1")
        // the GPU engine's buffers NaN-filled before each solve
        .env("TRM_POISON_GPU", "1")
        .output()
        .expect("example runs");
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// PyTorch's answers (tokens) on the sample puzzles after ACT step `step`.
fn pytorch_answers(step: usize) -> Vec<Vec<u32>> {
    let bytes =
        std::fs::read(common::repo_dir().join("data/sudoku-easy/reference_answers.safetensors"))
            .unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(&format!("answer.step{step}")).unwrap();
    let tokens: Vec<u32> = view
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    tokens.chunks(81).map(<[u32]>::to_vec).collect()
}

/// `answer: <81 characters>` lines of `--format line`, as tokens.
fn printed_answers(stdout: &str) -> Vec<Vec<u32>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("answer: "))
        .map(|line| {
            line.chars()
                .map(|c| c.to_digit(10).map_or(1, |d| d + 1))
                .collect()
        })
        .collect()
}

/// Runs the example on `backend`, checks its answers against PyTorch's and
/// returns what it printed.
fn check_sudoku_on(backend: &str, puzzles: usize, steps: usize) -> String {
    check_sudoku_with(backend, puzzles, steps, &[])
}

/// [`check_sudoku_on`] with `env` set (a GPU schedule, say).
fn check_sudoku_with(backend: &str, puzzles: usize, steps: usize, env: &[(&str, &str)]) -> String {
    let out = run_env(
        "sudoku",
        &[
            "--backend",
            backend,
            "--limit",
            &puzzles.to_string(),
            "--steps",
            &steps.to_string(),
            "--format",
            "line",
        ],
        env,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not the paper's Sudoku-Extreme model"),
        "{stdout}"
    );
    let answers = printed_answers(&stdout);
    assert_eq!(answers.len(), puzzles, "{stdout}");
    let expected = pytorch_answers(steps);
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer,
            &expected[i],
            "{backend}: puzzle {} differs from PyTorch's answer",
            i + 1
        );
    }
    stdout.into_owned()
}

/// All 100 sample puzzles, all 16 ACT steps: PyTorch's answers, and the
/// valid-solution rate of data/sudoku-easy/README.md (94%).
#[test]
fn sudoku_on_the_cpu_prints_pytorchs_answers_at_the_readme_rate() {
    let stdout = check_sudoku_on("cpu", 100, 16);
    assert!(stdout.contains("valid solutions: 94/100 (94%)"), "{stdout}");
    assert!(stdout.contains("engine: cpu"), "{stdout}");
}

#[test]
fn sudoku_on_vulkan_prints_pytorchs_answers() {
    if common::gpu::context().is_none() {
        return;
    }
    check_sudoku_on("vulkan", 6, 2);
    // and the small-batch schedule, which auto leaves to smaller batches
    check_sudoku_with("vulkan", 3, 1, &[("TRM_GPU_SCHEDULE", "spread")]);
}

#[test]
fn sudoku_on_gl_prints_pytorchs_answers() {
    if common::gpu::context().is_none() {
        return;
    }
    check_sudoku_on("gl", 3, 1);
}

#[test]
fn sudoku_trace_shows_the_recursion_refining() {
    let out = run("sudoku", &["--limit", "2", "--steps", "3", "--trace"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let steps: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("ACT step"))
        .collect();
    assert_eq!(steps.len(), 2 * 3, "{stdout}");
    assert!(stdout.contains("q_halt"), "{stdout}");
    assert!(stdout.contains("+-------+"), "grids are drawn: {stdout}");
}

#[test]
fn sudoku_reads_stdin_and_rejects_bad_lines() {
    use std::io::Write;
    let mut child = Command::new(example("sudoku"))
        .args(["-", "--steps", "1", "--format", "line"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"97..1..266.34.7...15..624.9...6.4.8...9..36477469.8...3...467...62.89.1389.531.6.\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        printed_answers(&String::from_utf8_lossy(&out.stdout)).len(),
        1
    );

    let bad = Command::new(example("sudoku"))
        .args(["/nonexistent/puzzles.txt"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error: "));
}

/// Runs the maze example on `backend`, checks the drawing, returns what it
/// printed but the engine line.
fn check_maze_on(backend: &str) -> String {
    let out = run("maze", &["--backend", backend]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("predicted path (o) after 4 ACT step(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("path cells:"), "{stdout}");
    // the sample maze and its overlay: 8 lines of 8 cells each, twice
    let rows = stdout
        .lines()
        .filter(|l| l.len() == 8 && l.starts_with('#'))
        .count();
    assert_eq!(rows, 16, "{stdout}");
    stdout
        .lines()
        .filter(|l| !l.starts_with("engine:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn maze_draws_a_prediction_on_the_cpu() {
    check_maze_on("cpu");
}

#[test]
fn maze_draws_a_prediction_on_vulkan_and_gl() {
    if common::gpu::context().is_none() {
        return;
    }
    let cpu = check_maze_on("cpu");
    // the same prediction and q_halt as the CPU engine
    assert_eq!(check_maze_on("vulkan"), cpu);
    assert_eq!(check_maze_on("gl"), cpu);
}

#[test]
fn adapters_lists_every_backend() {
    let out = run("adapters", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for api in ["vulkan:", "metal:", "dx12:", "gl:"] {
        assert!(stdout.contains(api), "{stdout}");
    }
    if common::gpu::context().is_some() {
        assert!(
            stdout.contains("runs the fused and the spread schedule"),
            "{stdout}"
        );
        let json = run("adapters", &["--json"]);
        let rows: Vec<HashMap<String, serde_json::Value>> = String::from_utf8_lossy(&json.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(rows.iter().any(|r| r["api"] == "vulkan"), "{rows:?}");
    }
}

/// An HRM Sudoku checkpoint through `--model` (the golden HRM case: the
/// authors' HRM code on random weights, so the answers are not solutions):
/// the same answers on the CPU and on Vulkan with early halting by HRM's
/// rule, and a trace of its ACT steps.
#[test]
fn sudoku_runs_an_hrm_checkpoint() {
    let model = common::data_dir().join("golden/hrm/hrm_sudoku_rope.model.safetensors");
    let model = model.to_str().unwrap();
    let mut answers = Vec::new();
    for backend in ["cpu", "vulkan"] {
        if backend != "cpu" && common::gpu::context().is_none() {
            continue;
        }
        let args = [
            "--model",
            model,
            "--backend",
            backend,
            "--limit",
            "3",
            "--steps",
            "2",
            "--halt",
            "--format",
            "line",
        ];
        let out = run("sudoku", &args);
        let printed = printed_answers(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(printed.len(), 3);
        answers.push(printed);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let out = run(
        "sudoku",
        &["--model", model, "--limit", "1", "--steps", "2", "--trace"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ACT step  2: q_halt"), "{stdout}");
}
