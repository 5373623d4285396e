//! `trm arc-eval` at a real evaluation's scale stays small in memory: a
//! data set and an answer log of 120,000 examples each (108 MB and 110 MB)
//! are voted by a child process whose peak resident memory (its VmHWM) is
//! measured.

mod common;

#[cfg(target_os = "linux")]
#[test]
fn voting_a_large_answer_log_stays_small() {
    use ndarray::{Array1, Array2};
    use ndarray_npy::WriteNpyExt;
    use trm_wgpu::arc::{Answer, AnswerLog, Grid};

    const EXAMPLES: usize = 120_000;
    const PER_PUZZLE: usize = 4;
    const DISTINCT_ANSWERS: usize = 1000;
    let dir = common::temp_dir("arc-memory");
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("test")).unwrap();

    // one original puzzle, copies named as the builder names them
    let input = Grid::from_rows(&[vec![1, 2, 3], vec![4, 5, 6]]).unwrap();
    let output = Grid::from_rows(&[vec![7, 7], vec![8, 8]]).unwrap();
    let puzzles = EXAMPLES / PER_PUZZLE;
    let mut names = vec!["<blank>".to_string()];
    names.extend((0..puzzles).map(|_| "big|||t0|||0123456789".to_string()));
    std::fs::write(
        data.join("identifiers.json"),
        serde_json::to_string(&names).unwrap(),
    )
    .unwrap();
    let test_puzzles = serde_json::json!({"big": {"train": [], "test": [
        {"input": input.to_rows(), "output": output.to_rows()}]}});
    std::fs::write(data.join("test_puzzles.json"), test_puzzles.to_string()).unwrap();
    let meta = serde_json::json!({"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0,
        "vocab_size": 12, "seq_len": 900, "num_puzzle_identifiers": names.len(),
        "total_groups": 1, "mean_puzzle_examples": PER_PUZZLE as f64, "total_puzzles": puzzles,
        "sets": ["all"]});
    std::fs::write(data.join("test/dataset.json"), meta.to_string()).unwrap();
    let canvas = input.to_canvas();
    let inputs = Array2::from_shape_fn((EXAMPLES, 900), |(_, j)| canvas[j]);
    let npy =
        |name: &str| std::fs::File::create(data.join(format!("test/all__{name}.npy"))).unwrap();
    inputs.write_npy(npy("inputs")).unwrap();
    drop(inputs);
    let indices: Vec<i32> = (0..=puzzles).map(|p| (p * PER_PUZZLE) as i32).collect();
    Array1::from(indices)
        .write_npy(npy("puzzle_indices"))
        .unwrap();
    let ids: Vec<i32> = (1..=puzzles as i32).collect();
    Array1::from(ids)
        .write_npy(npy("puzzle_identifiers"))
        .unwrap();
    Array1::from(vec![0i32, puzzles as i32])
        .write_npy(npy("group_indices"))
        .unwrap();

    // answers: the right one for a third, else one of many wrong ones
    let log_path = dir.join("answers.log");
    let mut log =
        AnswerLog::open(&log_path, EXAMPLES, &common::test_log_header(), |_| Ok(())).unwrap();
    for chunk in (0..EXAMPLES).collect::<Vec<_>>().chunks(4096) {
        let answers: Vec<Answer> = chunk
            .iter()
            .map(|&i| {
                let grid = if i % 3 == 0 {
                    output.clone()
                } else {
                    let k = (i % DISTINCT_ANSWERS) as u8;
                    Grid::new(2, 2, vec![k % 10, k / 10 % 10, k / 100 % 10, 9]).unwrap()
                };
                Answer {
                    example: i,
                    puzzle_identifier: (1 + i / PER_PUZZLE) as u32,
                    q_halt_logit: (i % 7) as f32 - 3.0,
                    steps: 16,
                    tokens: grid.to_canvas(),
                }
            })
            .collect();
        log.append(&answers).unwrap();
    }
    drop(log);

    let out = common::trm(&[
        "arc-eval",
        "--data",
        data.to_str().unwrap(),
        "--answers",
        log_path.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 40,000 votes for the right answer against at most 80 for any other
    assert_eq!(json["ARC/pass@1"], 1.0);

    // the child's own high-water mark (its peak before exec, the test
    // process's size at fork, would count in getrusage)
    let stderr = String::from_utf8_lossy(&out.stderr);
    let peak_mib: f64 = stderr
        .split("peak resident memory ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in: {stderr}"));
    eprintln!("peak resident memory of trm arc-eval: {peak_mib:.1} MiB");
    assert!(
        peak_mib < 64.0,
        "voting 218 MB of data set and answers peaked at {peak_mib:.1} MiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
