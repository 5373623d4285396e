//! The public API as a Rust application meets it (issue 27, item 6): one
//! token type with inputs of any integer type checked at the boundary, `?`
//! on the application's own I/O in a `trm_wgpu::Result` function, and
//! error messages that are whole sentences naming what went wrong.
//! `examples/quickstart.rs` (run by tests/examples.rs) is the program.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use trm_wgpu::gpu::{GpuBackend, GpuContext, GpuOptions};
use trm_wgpu::tasks::sudoku::Grid;
use trm_wgpu::{Backend, CpuEngine, Engine, PuzzleBatch, SolveOptions, TrmError, TrmModel};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn small_model() -> TrmModel {
    TrmModel::load(repo().join("tests/data/golden/sudoku_mlp_small.model.safetensors")).unwrap()
}

/// An application's function: its own file read, with `?`.
fn read_puzzles(path: &Path) -> trm_wgpu::Result<Vec<Grid>> {
    let text = std::fs::read_to_string(path)?;
    Grid::parse_many(&text)
}

#[test]
fn question_mark_converts_an_applications_io_error() {
    let err = read_puzzles(Path::new("/nonexistent/puzzles.txt")).unwrap_err();
    assert!(
        matches!(&err, TrmError::StdIo(e) if e.kind() == ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("I/O error: "), "{err}");
    assert_eq!(
        read_puzzles(&repo().join("data/sudoku-easy/puzzles.txt"))
            .unwrap()
            .len(),
        100
    );
    // the crate's own file errors name the file
    let err = TrmModel::load("/nonexistent/model.safetensors").unwrap_err();
    assert!(matches!(err, TrmError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/model.safetensors: "),
        "{err}"
    );
}

#[test]
fn a_directory_given_as_a_model_says_so() {
    let dir = repo().join("tests/data");
    let err = TrmModel::load(&dir).unwrap_err();
    match &err {
        TrmError::Io { path, source } => {
            assert_eq!(path, &dir);
            assert_eq!(source.kind(), ErrorKind::IsADirectory);
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "{}: is a directory; give a model file",
            dir.display()
        )),
        "{message}"
    );
    assert!(!message.contains("os error"), "{message}");
}

#[test]
fn token_ids_of_any_integer_type_make_the_same_batch() {
    let model = small_model();
    let config = model.config();
    let grid = Grid::parse(
        "97..1..266.34.7...15..624.9...6.4.8...9..36477469.8...3...467...62.89.1389.531.6.",
    )
    .unwrap();
    let tokens: [u32; 81] = grid.tokens();
    let from_u32 = PuzzleBatch::new(config, &tokens, None).unwrap();
    let wide: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let narrow: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
    assert_eq!(
        PuzzleBatch::new(config, &wide, Some(&[0])).unwrap(),
        from_u32
    );
    assert_eq!(PuzzleBatch::new(config, &narrow, None).unwrap(), from_u32);
    assert_eq!(from_u32.tokens(), tokens);

    // refused at the boundary with the typed errors, negative values too
    let mut bad = wide.clone();
    bad[5] = -3;
    assert!(matches!(
        PuzzleBatch::new(config, &bad, None),
        Err(TrmError::TokenOutOfRange {
            puzzle: 0,
            position: 5,
            value: -3,
            vocab_size: 11
        })
    ));
    bad[5] = 11;
    assert!(matches!(
        PuzzleBatch::new(config, &bad, None),
        Err(TrmError::TokenOutOfRange { value: 11, .. })
    ));
    assert!(matches!(
        PuzzleBatch::new(config, &wide, Some(&[-1])),
        Err(TrmError::PuzzleIdOutOfRange { value: -1, .. })
    ));

    // predictions come back in the same type, and read back into a grid
    let mut engine = CpuEngine::new(Arc::new(model.clone())).unwrap();
    let options = SolveOptions::default().act_steps(1);
    let one = engine.solve_puzzle(&tokens, 0, &options).unwrap();
    let predicted: Vec<u32> = one.predictions();
    assert_eq!(
        predicted,
        engine.solve(&from_u32, &options).unwrap().predictions()
    );
    assert_eq!(Grid::from_tokens(&predicted).to_line().len(), 81);
}

#[test]
fn a_bad_backend_name_is_quoted_apart_from_the_valid_ones() {
    let err = "cuda".parse::<Backend>().unwrap_err();
    assert!(matches!(err, TrmError::BackendUnavailable(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "unknown backend `cuda`: use one of cpu, gpu, auto, vulkan, metal, dx12, gl"
    );
    let err = "cuda".parse::<GpuBackend>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown GPU backend `cuda`: use one of gpu, vulkan, metal, dx12, gl"
    );
}

#[test]
fn no_adapter_is_a_whole_sentence() {
    let options = GpuOptions::default().adapter_name("no adapter is named like this");
    let err = GpuContext::new(&options).expect_err("no such adapter");
    assert!(matches!(err, TrmError::NoAdapter(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message
            .starts_with("no GPU adapter named like `no adapter is named like this` (adapters: "),
        "{message}"
    );
    let TrmError::NoAdapter(inner) = &err else {
        unreachable!()
    };
    assert_eq!(inner, &message, "the variant holds the whole message");
}
