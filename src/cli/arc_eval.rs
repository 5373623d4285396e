//! `trm arc-eval`: the authors' ARC evaluation over a built data set, from
//! a model (run here) or from given predictions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use trm_wgpu::arc::{self, AnswerLog, ArcDataset, ArcVoter, Predictions};
use trm_wgpu::{
    Backend, Engine, EngineOptions, GpuSchedule, LoadOptions, Result, SolveOptions, TrmError,
    TrmModel,
};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("answers_from").required(true).multiple(true).args(["model", "predictions", "answers"])))]
pub struct ArcEvalArgs {
    /// The built data set: the output directory of the authors'
    /// `dataset/build_arc_dataset.py` (test/, identifiers.json,
    /// test_puzzles.json).
    #[arg(long)]
    data: PathBuf,
    /// Answer every test example with this model (the project's format;
    /// `trm convert` makes it from a step_N checkpoint).
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Vote over given answers instead: inputs, preds, puzzle_identifiers,
    /// q_halt_logits, one row per example (the authors' saved predictions).
    #[arg(long, conflicts_with_all = ["model", "answers"])]
    predictions: Option<PathBuf>,
    /// Answer log: with --model, each answer is appended here as it comes
    /// and a rerun resumes from the answers already in it; without
    /// --model, the vote runs over the answers in it.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Write the two-attempt submission (ARC Prize format) here.
    #[arg(long)]
    submission: Option<PathBuf>,
    /// The k of pass@k.
    #[arg(long, value_delimiter = ',', default_values_t = arc::DEFAULT_PASS_KS)]
    pass_k: Vec<usize>,
    /// Print the results as one JSON object (`ARC/pass@k` keys) and nothing
    /// else on stdout.
    #[arg(long)]
    json: bool,
    /// Evaluate the first N puzzles of test_puzzles.json only (with all of
    /// their augmented copies).
    #[arg(long)]
    limit: Option<usize>,
    /// Accept (and list) model tensors the configuration does not use.
    #[arg(long)]
    allow_unexpected: bool,
    /// Run the network at this weight precision: f32, f16, bf16 or int8
    /// (default: as stored).
    #[arg(long)]
    precision: Option<trm_wgpu::Precision>,
    /// Engine: cpu, gpu, auto, or a GPU API (vulkan, metal, dx12, gl).
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// GPU adapter: the first whose name contains this, case-insensitive.
    #[arg(long)]
    adapter: Option<String>,
    /// GPU schedule: fused, spread or auto.
    #[arg(long, default_value = "auto", env = "TRM_GPU_SCHEDULE")]
    schedule: GpuSchedule,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Examples per solve.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// ACT steps (default: the model's halt_max_steps, as the authors
    /// evaluate).
    #[arg(long)]
    steps: Option<usize>,
    /// Early halting: each example stops after its first ACT step with
    /// q_halt > 0 (the authors run every step).
    #[arg(long)]
    halt: bool,
}

pub fn arc_eval(args: ArcEvalArgs) -> Result<()> {
    if args.pass_k.is_empty() || args.pass_k.contains(&0) {
        return Err(TrmError::Input(
            "--pass-k needs values of at least 1".into(),
        ));
    }
    if args.batch == 0 {
        return Err(TrmError::Input("--batch must be at least 1".into()));
    }
    let dataset = ArcDataset::open(&args.data)?;
    let mut voter = arc::voter_for(&dataset, args.limit)?;
    if let Some(path) = &args.predictions {
        vote_predictions(&mut voter, &Predictions::open(path)?)?;
    } else if let Some(path) = &args.model {
        answer_with_model(&args, path, &dataset, &mut voter)?;
    } else if let Some(path) = &args.answers {
        AnswerLog::replay(path, dataset.len(), |answer| {
            arc::vote_answer(&mut voter, &dataset, &answer)
        })?;
    }
    let results = voter.results(&args.pass_k);
    if let Some(path) = &args.submission {
        results.submission.write(path)?;
    }
    if args.json {
        println!("{}", results.to_json());
    } else {
        for (k, v) in &results.pass_at {
            println!("ARC/pass@{k}: {v:.4}");
        }
    }
    let puzzles = results.submission.0.len();
    eprintln!(
        "{puzzles} puzzles, {} answers voted{}{}{}",
        results.answers - results.unused_answers,
        if results.unused_answers > 0 {
            format!(", {} outside the evaluated puzzles", results.unused_answers)
        } else {
            String::new()
        },
        if results.without_answers.is_empty() {
            String::new()
        } else {
            format!(
                ", {} test inputs without an answer (counted wrong)",
                results.without_answers.len()
            )
        },
        match super::peak_resident_mib() {
            Some(mib) => format!("; peak resident memory {mib:.1} MiB"),
            None => String::new(),
        }
    );
    Ok(())
}

fn vote_predictions(voter: &mut ArcVoter, preds: &Predictions) -> Result<()> {
    for i in 0..preds.len() {
        let (id, input, pred, q) = preds.get(i)?;
        voter.add(id, &input, &pred, q).map_err(|e| match e {
            TrmError::Input(why) => TrmError::Input(format!("prediction {i}: {why}")),
            other => other,
        })?;
    }
    Ok(())
}

fn answer_with_model(
    args: &ArcEvalArgs,
    path: &PathBuf,
    dataset: &ArcDataset,
    voter: &mut ArcVoter,
) -> Result<()> {
    let mut options = LoadOptions::default().allow_unexpected(args.allow_unexpected);
    options.precision = args.precision;
    let model = TrmModel::load_with(path, &options, None)?;
    if !model.ignored_tensors().is_empty() {
        eprintln!(
            "warning: ignored tensors the configuration does not use: {}",
            model.ignored_tensors().join(", ")
        );
    }
    arc::check_model(model.config(), dataset)?;
    let mut solve = SolveOptions::default().early_halt(args.halt);
    if let Some(steps) = args.steps {
        solve = solve.act_steps(steps);
    }
    solve.resolved_act_steps(model.config())?;

    let mut selected = dataset.selected_examples(args.limit);
    let mut log = None;
    if let Some(path) = &args.answers {
        let mut answered = vec![false; dataset.len()];
        let opened = AnswerLog::open(path, dataset.len(), |answer| {
            answered[answer.example] = true;
            arc::vote_answer(voter, dataset, &answer)
        })?;
        let before = selected.len();
        selected.retain(|&i| !answered[i]);
        if before > selected.len() {
            eprintln!(
                "resuming: {} of {before} examples answered in {}",
                before - selected.len(),
                path.display()
            );
        }
        log = Some(opened);
    }

    let mut engine_options = EngineOptions::default();
    engine_options.adapter = args.adapter.clone();
    engine_options.threads = args.threads;
    engine_options.schedule = args.schedule;
    let mut engine = args.backend.build(Arc::new(model), &engine_options)?;
    if let Some(reason) = engine.gpu_unavailable() {
        eprintln!("note: running on the CPU: {reason}");
    }
    eprintln!(
        "answering {} examples on {} ({} per solve)",
        selected.len(),
        engine.describe(),
        args.batch
    );
    let bar = ProgressBar::new(selected.len() as u64).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} examples, {per_sec}, ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    arc::answer_examples(
        &mut engine as &mut dyn Engine,
        dataset,
        &selected,
        args.batch,
        &solve,
        |answers| {
            if let Some(log) = log.as_mut() {
                log.append(answers)?;
            }
            for answer in answers {
                arc::vote_answer(voter, dataset, answer)?;
            }
            bar.inc(answers.len() as u64);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    if !selected.is_empty() {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{} examples in {secs:.1} s ({:.3} s per example)",
            selected.len(),
            secs / selected.len() as f64
        );
    }
    Ok(())
}
