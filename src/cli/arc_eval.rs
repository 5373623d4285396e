//! `trm arc-eval`: the authors' ARC evaluation over a built data set, from
//! a model (run here) or from given predictions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use trm_wgpu::arc::{self, AnswerLog, ArcDataset, ArcVoter, LogHeader, Predictions};
use trm_wgpu::shard::{self, RunSettings, Shard};
use trm_wgpu::{
    ActivationPrecision, Backend, Engine, EngineOptions, GpuSchedule, LoadOptions, Result,
    SolveOptions, TrmError, TrmModel,
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
    /// and a rerun with the same model and settings resumes from the
    /// answers already in it; without --model, the vote runs over the
    /// answers in it. Repeat it to vote over several logs at once (the
    /// logs of the shards of one run: logs of other models or settings are
    /// refused).
    #[arg(long)]
    answers: Vec<PathBuf>,
    /// Answer only share K of N of the evaluated examples (0-based: 0/4 is
    /// the first quarter) into this run's own --answers log, to split the
    /// evaluation across processes or machines; then vote over every
    /// share's log with `--answers LOG0 --answers LOG1 ...`.
    #[arg(long, value_name = "K/N", requires_all = ["model", "answers"], conflicts_with = "submission")]
    shard: Option<Shard>,
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
        if let Some(shard) = args.shard {
            // a share's pass@k says nothing: the vote waits for every share
            eprintln!(
                "shard {shard} answered into {}; vote over every shard's log with --answers LOG0 --answers LOG1 ...",
                args.answers[0].display()
            );
            return Ok(());
        }
    } else {
        vote_logs(&args.answers, &dataset, &mut voter)?;
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

/// Votes over the answer logs `paths`: the logs of one run (its shards),
/// so their headers must record the same settings and no example may be
/// answered twice. A log of the first format (no header) is voted alone.
fn vote_logs(paths: &[PathBuf], dataset: &ArcDataset, voter: &mut ArcVoter) -> Result<()> {
    let mut first: Option<(&PathBuf, LogHeader)> = None;
    let mut shards = Vec::new();
    for path in paths {
        let header = AnswerLog::header(path, dataset.len())?;
        let Some(header) = header else {
            if paths.len() > 1 {
                return Err(TrmError::Input(format!(
                    "{} is an answer log of the first format, which does not record the model and settings that wrote it: it can only be voted alone",
                    path.display()
                )));
            }
            continue;
        };
        shards.extend(header.shard);
        match &first {
            None => first = Some((path, header)),
            Some((first_path, first)) => first.settings.check_same(
                &header.settings,
                &first_path.display().to_string(),
                &path.display().to_string(),
            )?,
        }
    }
    // which log answered each example, to refuse one answered twice
    let mut answered_by: Vec<Option<usize>> = vec![None; dataset.len()];
    for (i, path) in paths.iter().enumerate() {
        AnswerLog::replay(path, dataset.len(), |answer| {
            if let Some(j) = answered_by[answer.example].replace(i) {
                return Err(TrmError::Input(format!(
                    "example {} is answered in both {} and {} (the same log or shard twice?)",
                    answer.example,
                    paths[j].display(),
                    path.display()
                )));
            }
            arc::vote_answer(voter, dataset, &answer)
        })?;
    }
    if let Some(count) = shards.first().map(|s| s.count) {
        let missing: Vec<String> = (0..count)
            .filter(|&k| !shards.iter().any(|s| s.count == count && s.index == k))
            .map(|k| format!("{k}/{count}"))
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "note: no log of shard {} among those given: their examples count as unanswered",
                missing.join(", ")
            );
        }
    }
    Ok(())
}

/// What the answers of `model` (loaded from `path`) depend on in this run.
fn run_settings(
    path: &PathBuf,
    model: &TrmModel,
    solve: &SolveOptions,
    dataset: &ArcDataset,
) -> Result<RunSettings> {
    Ok(RunSettings {
        model_sha256: shard::file_sha256(path)?,
        precision: model.precision().as_str().into(),
        act_steps: solve.resolved_act_steps(model.config())?,
        early_halt: solve.early_halt,
        // arc-eval runs the CPU's products at f32 activations
        activations: ActivationPrecision::default().to_string(),
        data_sha256: dataset.fingerprint(),
    })
}

fn answer_with_model(
    args: &ArcEvalArgs,
    path_of_model: &PathBuf,
    dataset: &ArcDataset,
    voter: &mut ArcVoter,
) -> Result<()> {
    let mut options = LoadOptions::default().allow_unexpected(args.allow_unexpected);
    options.precision = args.precision;
    let model = TrmModel::load_with(path_of_model, &options, None)?;
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
    if let Some(shard) = args.shard {
        selected = selected[shard.range(selected.len())].to_vec();
    }
    let mut log = None;
    if args.answers.len() > 1 {
        return Err(TrmError::Input(
            "--model writes one answer log: give --answers once (several logs are voted without --model)".into(),
        ));
    }
    if let Some(path) = args.answers.first() {
        let header = LogHeader::new(
            run_settings(path_of_model, &model, &solve, dataset)?,
            args.shard,
            path_of_model,
        );
        let mut answered = vec![false; dataset.len()];
        let opened = AnswerLog::open(path, dataset.len(), &header, |answer| {
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
