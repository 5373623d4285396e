//! Checkpoints and inputs from strangers: every lie a file can tell ends in
//! a typed error, before anything is executed or allocated on its word, and
//! the `trm` binary reports it on one line without panicking.

mod common;

use std::collections::HashMap;

use common::torch_save::{
    OFFICIAL_PREFIX, PickleTensor, Pickler, all_config_yaml, dataset_json, model_state_dict,
    model_step_file, state_dict_pickle, torch_zip,
};
use common::{
    RawTensor, assert_one_error_line, model_bytes, raw_tensors, safetensors_bytes, temp_dir, trm,
    trm_env,
};
use trm_wgpu::checkpoint::official::{self, ConvertOptions, OfficialCheckpoint};
use trm_wgpu::checkpoint::pickle;
use trm_wgpu::{LoadOptions, PosEncodings, PuzzleBatch, TrmConfig, TrmError, TrmModel};

fn config() -> TrmConfig {
    TrmConfig {
        seq_len: 6,
        vocab_size: 5,
        num_puzzle_identifiers: 3,
        hidden_size: 8,
        expansion: 2.0,
        num_heads: 2,
        h_cycles: 1,
        l_cycles: 2,
        l_layers: 1,
        h_layers: 0,
        arch: Default::default(),
        halt_max_steps: 2,
        mlp_t: true,
        pos_encodings: PosEncodings::None,
        puzzle_emb_ndim: 8,
        puzzle_emb_len: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
    }
}

fn model() -> TrmModel {
    TrmModel::random(config(), 3, 0.5).unwrap()
}

fn load(bytes: &[u8]) -> Result<TrmModel, TrmError> {
    TrmModel::from_safetensors_bytes(bytes, "test", &LoadOptions::default(), None)
}

/// A safetensors file with a hand-written header.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// Opens the hostile `bytes` as an ARC predictions file (`trm arc-eval
/// --predictions`), which must refuse them: a header every safetensors
/// reader refuses as such, anything else as not a predictions file.
fn predictions_error(bytes: &[u8]) -> TrmError {
    let path = temp_dir("hostile-predictions").join("predictions.safetensors");
    std::fs::write(&path, bytes).unwrap();
    match trm_wgpu::arc::Predictions::open(&path) {
        Ok(p) => panic!("predictions of {} rows accepted", p.len()),
        Err(e) => e,
    }
}

fn assert_predictions_refused(bytes: &[u8]) {
    let err = predictions_error(bytes);
    assert!(matches!(err, TrmError::Safetensors { .. }), "{err:?}");
}

fn config_meta() -> String {
    let json = config().to_json();
    serde_json::to_string(&json).unwrap()
}

// ---------------------------------------------------------------- safetensors

#[test]
fn unreadable_and_truncated_model_files() {
    assert!(matches!(
        TrmModel::load("/nonexistent/model.safetensors"),
        Err(TrmError::Io { .. })
    ));
    let bytes = model().to_safetensors_bytes().unwrap();
    for len in [0, 3, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            matches!(load(&bytes[..len]), Err(TrmError::Safetensors { .. })),
            "truncated to {len}"
        );
    }
}

#[test]
fn header_claiming_more_bytes_than_the_file_holds() {
    let mut bytes = model().to_safetensors_bytes().unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(load(&bytes), Err(TrmError::Safetensors { .. })));
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(load(&bytes), Err(TrmError::Safetensors { .. })));
}

#[test]
fn offsets_out_of_range_or_overflowing() {
    let meta = config_meta();
    for offsets in [
        "[0, 4096]",
        "[0, 18446744073709551615]",
        "[18446744073709551612, 18446744073709551615]",
    ] {
        let header = format!(
            r#"{{"__metadata__": {{"config": {meta}}}, "inner.H_init": {{"dtype": "F32", "shape": [8], "data_offsets": {offsets}}}}}"#
        );
        let bytes = raw_safetensors(&header, &[0u8; 32]);
        assert!(
            matches!(load(&bytes), Err(TrmError::Safetensors { .. })),
            "{offsets}"
        );
        assert_predictions_refused(&bytes);
    }
    // Eight consistent tensors of 2^61 - 1 bytes: the last offset plus the
    // header length overflows inside safetensors 0.8.
    let size = (1u64 << 61) - 1;
    let header = (0..8)
        .map(|i| {
            format!(
                r#""t{i}": {{"dtype": "U8", "shape": [{size}], "data_offsets": [{}, {}]}}"#,
                i * size,
                (i + 1) * size
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let bytes = raw_safetensors(&format!("{{{header}}}"), &[]);
    assert!(matches!(load(&bytes), Err(TrmError::Safetensors { .. })));
    assert_predictions_refused(&bytes);
    // Offsets chained so that their sum would wrap around.
    let big = 1u64 << 62;
    let header = format!(
        r#"{{"a": {{"dtype": "U8", "shape": [{big}], "data_offsets": [0, {big}]}}, "b": {{"dtype": "U8", "shape": [{big}], "data_offsets": [{big}, {}]}}, "c": {{"dtype": "U8", "shape": [{big}], "data_offsets": [{}, {}]}}, "d": {{"dtype": "U8", "shape": [{}], "data_offsets": [{}, 18446744073709551615]}}}}"#,
        2 * big,
        2 * big,
        3 * big,
        big - 1,
        3 * big
    );
    let bytes = raw_safetensors(&header, &[]);
    assert!(matches!(load(&bytes), Err(TrmError::Safetensors { .. })));
    assert_predictions_refused(&bytes);
}

#[test]
fn shapes_whose_product_overflows() {
    let meta = config_meta();
    for shape in [
        "[4294967296, 4294967296]",
        "[18446744073709551615, 2]",
        "[0, 18446744073709551615, 18446744073709551615]",
    ] {
        let header = format!(
            r#"{{"__metadata__": {{"config": {meta}}}, "inner.H_init": {{"dtype": "F32", "shape": {shape}, "data_offsets": [0, 0]}}}}"#
        );
        let bytes = raw_safetensors(&header, &[]);
        let result = load(&bytes);
        assert!(
            matches!(
                result,
                Err(TrmError::Safetensors { .. }) | Err(TrmError::TensorShape { .. })
            ),
            "{shape}: {result:?}"
        );
        let err = predictions_error(&bytes);
        assert!(
            matches!(err, TrmError::Safetensors { .. } | TrmError::Dataset { .. }),
            "{shape}: {err:?}"
        );
    }
}

#[test]
fn missing_and_misshapen_tensors() {
    let m = model();
    let meta = config().to_json();
    let mut tensors = raw_tensors(&m);
    tensors.retain(|t| t.name != "inner.lm_head.weight");
    assert!(matches!(
        load(&model_bytes(&tensors, &meta)),
        Err(TrmError::MissingTensor { name, .. }) if name == "inner.lm_head.weight"
    ));
    let mut tensors = raw_tensors(&m);
    tensors[0] = RawTensor::f32(&tensors[0].name.clone(), vec![5, 4], &[0.0; 20]);
    assert!(matches!(
        load(&model_bytes(&tensors, &meta)),
        Err(TrmError::TensorShape { .. })
    ));
}

/// A tensor much larger than the configuration implies is refused by its
/// shape, before it is widened; one the configuration does not use is never
/// widened at all.
#[test]
fn tensor_far_larger_than_the_configuration_implies() {
    let m = model();
    let meta = config().to_json();
    let mut tensors = raw_tensors(&m);
    let huge = vec![0.5f32; 20_000 * 8];
    tensors[0] = RawTensor::f32(
        "inner.embed_tokens.embedding_weight",
        vec![20_000, 8],
        &huge,
    );
    match load(&model_bytes(&tensors, &meta)) {
        Err(TrmError::TensorShape {
            expected, actual, ..
        }) => {
            assert_eq!(expected, vec![5, 8]);
            assert_eq!(actual, vec![20_000, 8]);
        }
        other => panic!("{other:?}"),
    }
    let mut tensors = raw_tensors(&m);
    tensors.push(RawTensor::f32("inner.extra.weight", vec![20_000, 8], &huge));
    let bytes = model_bytes(&tensors, &meta);
    assert!(matches!(
        load(&bytes),
        Err(TrmError::UnexpectedTensors { .. })
    ));
    let lenient = TrmModel::from_safetensors_bytes(
        &bytes,
        "test",
        &LoadOptions::default().allow_unexpected(true),
        None,
    )
    .unwrap();
    assert_eq!(lenient.ignored_tensors(), ["inner.extra.weight"]);
}

#[test]
fn configuration_asking_for_absurd_sizes() {
    let mut c: serde_json::Value = serde_json::from_str(&config().to_json()).unwrap();
    c["hidden_size"] = 1_000_000.into();
    c["seq_len"] = 1_000_000.into();
    let bytes = model_bytes(&raw_tensors(&model()), &c.to_string());
    assert!(matches!(load(&bytes), Err(TrmError::Config(_))));
    c["hidden_size"] = serde_json::json!(1u64 << 63);
    let bytes = model_bytes(&raw_tensors(&model()), &c.to_string());
    assert!(matches!(load(&bytes), Err(TrmError::Config(_))));
}

#[test]
fn configuration_contradicting_the_tensors() {
    let mut c: serde_json::Value = serde_json::from_str(&config().to_json()).unwrap();
    c["vocab_size"] = 9.into();
    let bytes = model_bytes(&raw_tensors(&model()), &c.to_string());
    assert!(matches!(load(&bytes), Err(TrmError::TensorShape { .. })));
}

// ---------------------------------------------------------------- pickles

/// The storages of [`model`]'s tensors, by key.
fn parts() -> HashMap<String, Vec<u8>> {
    let (_, storages) = model_state_dict(&model(), OFFICIAL_PREFIX, false);
    storages.into_iter().collect()
}

fn tensors() -> Vec<PickleTensor> {
    model_state_dict(&model(), OFFICIAL_PREFIX, false).0
}

fn open_pickle(pickle_bytes: &[u8]) -> Result<OfficialCheckpoint, TrmError> {
    OfficialCheckpoint::from_parts(pickle_bytes, parts(), "test")
}

fn forbidden(result: Result<impl std::fmt::Debug, TrmError>) -> (String, String) {
    match result {
        Err(TrmError::ForbiddenPickleGlobal { module, name, .. }) => (module, name),
        other => panic!("expected ForbiddenPickleGlobal, got {other:?}"),
    }
}

/// The classic payload: `os.system('...')` on load.
fn os_system_pickle() -> Vec<u8> {
    let mut p = Pickler::new();
    p.raw_global("os", "system")
        .str("touch /tmp/trm-pwned")
        .op(0x85)
        .op(b'R')
        .finish()
}

#[test]
fn malicious_pickle_is_rejected_by_name() {
    let (module, name) = forbidden(pickle::parse(&os_system_pickle(), "test"));
    assert_eq!((module.as_str(), name.as_str()), ("os", "system"));
    assert!(!std::path::Path::new("/tmp/trm-pwned").exists());
    let message = pickle::parse(&os_system_pickle(), "evil.pt")
        .unwrap_err()
        .to_string();
    assert!(message.contains("`os.system`"), "{message}");
    assert!(message.contains("evil.pt"), "{message}");

    // Every well-known vehicle, by GLOBAL and by STACK_GLOBAL.
    for (module, name) in [
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("__builtin__", "getattr"),
        ("subprocess", "Popen"),
        ("subprocess", "check_output"),
        ("posix", "system"),
        ("nt", "system"),
        ("pickle", "loads"),
        ("torch", "load"),
        ("torch.nn", "Module"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("collections", "defaultdict"),
        ("torch", "UntypedStorage"),
    ] {
        let by_global = Pickler::new()
            .raw_global(module, name)
            .op(b')')
            .op(b'R')
            .finish();
        assert_eq!(
            forbidden(pickle::parse(&by_global, "t")),
            (module.to_string(), name.to_string())
        );
        let mut p = Pickler::new();
        p.out.push(0x8c);
        p.out.push(module.len() as u8);
        p.out.extend(module.as_bytes());
        p.out.push(0x8c);
        p.out.push(name.len() as u8);
        p.out.extend(name.as_bytes());
        let by_stack_global = p.op(0x93).op(b')').op(b'R').finish();
        assert_eq!(
            forbidden(pickle::parse(&by_stack_global, "t")),
            (module.to_string(), name.to_string())
        );
    }
}

/// The refusal happens at the opcode that names the global: whatever
/// follows is never looked at, whatever precedes it is harmless data.
#[test]
fn forbidden_global_is_refused_before_anything_else() {
    let mut p = Pickler::new();
    p.op(b'}').op(b'(').str("a").int(1);
    p.raw_global("os", "system");
    p.raw(&[0xff; 64]); // never reached
    assert_eq!(
        forbidden(pickle::parse(&p.out, "t")),
        ("os".into(), "system".into())
    );
    // Inside a real state dict, in a real archive, through the converter.
    let tensors = tensors();
    let mut p = Pickler::new();
    p.op(b'}').op(b'(');
    for t in &tensors[..2] {
        p.str(&t.name).tensor(t);
    }
    p.str("evil").raw_global("subprocess", "Popen");
    let step = torch_zip("step_1", &p.finish(), &[]);
    let m = model();
    assert_eq!(
        forbidden(official::convert_bytes(
            step,
            &all_config_yaml(&m),
            Some(&dataset_json(&m)),
            &ConvertOptions::default()
        )),
        ("subprocess".into(), "Popen".into())
    );
}

#[test]
fn opcodes_that_build_objects_are_refused() {
    for (opcode, body) in [
        ("INST", b"ios\nsystem\n".to_vec()),
        ("OBJ", vec![b'(', b'o']),
        ("NEWOBJ", vec![b')', b')', 0x81]),
        ("NEWOBJ_EX", vec![0x92]),
        ("EXT1", vec![0x82, 1]),
        ("PERSID", b"P0\n".to_vec()),
        ("BINBYTES", vec![b'B', 1, 0, 0, 0, 0]),
    ] {
        let mut p = Pickler::new();
        p.raw(&body);
        let err = pickle::parse(&p.finish(), "t").unwrap_err();
        assert!(
            matches!(&err, TrmError::Checkpoint { reason, .. } if reason.contains(opcode)),
            "{opcode}: {err}"
        );
    }
}

#[test]
fn a_valid_pickle_opens() {
    let checkpoint = open_pickle(&state_dict_pickle(&tensors())).unwrap();
    assert_eq!(checkpoint.tensors().len(), tensors().len());
}

fn checkpoint_error(pickle_bytes: &[u8], needle: &str) {
    match open_pickle(pickle_bytes) {
        Err(TrmError::Checkpoint { reason, .. }) => {
            assert!(reason.contains(needle), "`{needle}` not in: {reason}")
        }
        other => panic!("expected a Checkpoint error with `{needle}`, got {other:?}"),
    }
}

#[test]
fn names_with_control_characters_are_refused() {
    let mut t = tensors();
    t[0].name = "inner.embed\n\x1b[31mtokens".into();
    checkpoint_error(&state_dict_pickle(&t), "embed\\n\\u{1b}[31mtokens");
    let mut t = tensors();
    t[0].name = "x".repeat(5000);
    checkpoint_error(&state_dict_pickle(&t), "not a plain name");
    let mut tensors = raw_tensors(&model());
    tensors[0].name = "inner.embed_tokens\r.embedding_weight".into();
    let err = load(&model_bytes(&tensors, &config().to_json())).unwrap_err();
    assert!(matches!(err, TrmError::Safetensors { .. }), "{err}");
    assert!(!err.to_string().contains('\r'), "{err}");
    // A global's name is escaped in the message too.
    let evil = Pickler::new().raw_global("os\r", "system\x1b").finish();
    let err = pickle::parse(&evil, "t").unwrap_err().to_string();
    assert!(err.contains("os\\r.system\\u{1b}"), "{err}");
}

#[test]
fn storage_offset_outside_its_data() {
    let mut t = tensors();
    t[0].offset = t[0].numel; // one past the end
    checkpoint_error(&state_dict_pickle(&t), "lies outside its storage");
    let mut t = tensors();
    t[0].offset = i64::MAX as u64;
    checkpoint_error(&state_dict_pickle(&t), "lies outside its storage");
}

#[test]
fn mismatched_sizes() {
    // The persistent id claims more elements than the storage holds.
    let mut t = tensors();
    t[1].numel += 1;
    checkpoint_error(&state_dict_pickle(&t), "but its entry holds");
    // The view is larger than its storage.
    let mut t = tensors();
    t[1].shape[0] += 1;
    t[1].stride = PickleTensor::contiguous(
        "",
        "",
        "",
        &[t[1].shape[0] as usize, t[1].shape[1] as usize],
    )
    .stride;
    checkpoint_error(&state_dict_pickle(&t), "lies outside its storage");
    // The storage class disagrees with the bytes (bf16 claims half as many).
    let mut t = tensors();
    t[2].storage_class = "DoubleStorage".into();
    checkpoint_error(&state_dict_pickle(&t), "but its entry holds");
    // One key named as two different storages.
    let mut t = tensors();
    t[4].key = t[3].key.clone();
    checkpoint_error(&state_dict_pickle(&t), "is named both as");
    // A storage the archive lacks.
    let mut t = tensors();
    t[0].key = "999".into();
    checkpoint_error(&state_dict_pickle(&t), "storage `999`");
}

#[test]
fn overflowing_pickle_shapes() {
    let mut t = tensors();
    t[0].shape = vec![1 << 40, 1 << 40];
    t[0].stride = vec![1 << 40, 1];
    checkpoint_error(&state_dict_pickle(&t), "overflows");
    let mut t = tensors();
    t[0].shape = vec![1 << 62];
    t[0].stride = vec![1];
    checkpoint_error(&state_dict_pickle(&t), "lies outside");
    // Negative sizes and offsets.
    let mut p = Pickler::new();
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.op(b'(')
        .op(b'(')
        .str("storage")
        .global("torch", "FloatStorage");
    p.str("0").str("cpu").int(40).op(b't').op(b'Q');
    p.int(-1)
        .int_tuple(&[40])
        .int_tuple(&[1])
        .op(0x89)
        .op(b'}')
        .op(b't')
        .op(b'R');
    let err = pickle::parse(&p.finish(), "t").unwrap_err();
    assert!(err.to_string().contains("< 0"), "{err}");
}

#[test]
fn non_contiguous_strides_are_refused_clearly() {
    let mut t = tensors();
    let shape = t[0].shape.clone();
    t[0].stride = vec![1, shape[0]]; // a transposed view
    checkpoint_error(
        &state_dict_pickle(&t),
        "only contiguous tensors are supported",
    );
}

#[test]
fn pickles_that_are_not_state_dicts() {
    // A list, a dict of ints, int keys, a name given twice.
    let list = Pickler::new().op(b']').finish();
    checkpoint_error(&list, "not a state dict");
    let ints = Pickler::new().op(b'}').str("a").int(1).op(b's').finish();
    checkpoint_error(&ints, "not a tensor");
    let t = tensors();
    let mut p = Pickler::new();
    p.op(b'}').op(b'(');
    p.str(&t[0].name)
        .tensor(&t[0])
        .str(&t[0].name)
        .tensor(&t[0]);
    checkpoint_error(&p.op(b'u').finish(), "given twice");
    // Malformed machine states.
    for (bytes, needle) in [
        (vec![0x80, 2], "pickle ends"),
        (vec![0x80, 2, b'.'], "STOP with 0 values"),
        (vec![0x80, 2, b'N', b'N', b'.'], "STOP with 2 values"),
        (vec![0x80, 2, b't', b'.'], "no MARK"),
        (vec![0x80, 2, b'R'], "underflow"),
        (vec![0x80, 2, b'h', 9], "memo entry 9"),
        (vec![0x80, 9], "protocol 9"),
        (vec![0x80, 2, b'c', b'o', b's'], "newline"),
        (vec![0x80, 2, 0x8a, 9], "LONG1"),
        (vec![0x80, 2, b']', b'q', 1, b'h', 1, b'.'], "mutable list"),
    ] {
        checkpoint_error(&bytes, needle);
    }
}

#[test]
fn pickle_resources_are_bounded_before_allocation() {
    let too_large = |bytes: &[u8]| match pickle::parse(bytes, "t") {
        Err(TrmError::TooLarge(message)) => message,
        other => panic!("expected TooLarge, got {other:?}"),
    };
    // A string that claims 4 GiB.
    let mut p = Pickler::new();
    p.raw(&[b'X', 0xff, 0xff, 0xff, 0xff]);
    assert!(too_large(&p.out).contains("string"));
    // A string that claims more than the pickle holds.
    let mut p = Pickler::new();
    p.raw(&[b'X', 0x00, 0x10, 0x00, 0x00, b'a']);
    assert!(matches!(
        pickle::parse(&p.out, "t"),
        Err(TrmError::Checkpoint { .. })
    ));
    // Copies of a memoized value, doubling: 2^40 bytes if it were built.
    let mut p = Pickler::new();
    p.str(&"x".repeat(1000)).raw(&[b'q', 0]);
    for _ in 0..30 {
        p.raw(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    assert!(too_large(&p.finish()).contains("bytes of values"));
    // Many copies of a large string.
    let mut p = Pickler::new();
    p.str(&"x".repeat(60_000)).raw(&[b'q', 0]);
    for _ in 0..10_000 {
        p.raw(&[b'h', 0]);
    }
    assert!(too_large(&p.finish()).contains("bytes of values"));
    // Nesting deeper than the limit.
    let mut p = Pickler::new();
    p.op(b')');
    for _ in 0..100 {
        p.op(0x85);
    }
    assert!(too_large(&p.finish()).contains("nest"));
    // Marks without end.
    let mut p = Pickler::new();
    for _ in 0..10_000 {
        p.op(b'(');
    }
    assert!(too_large(&p.finish()).contains("marks"));
    // A memo that grows without end.
    let mut p = Pickler::new();
    p.op(b'N');
    for i in 0..(pickle::MAX_MEMO as u32 + 1) {
        p.out.push(b'r');
        p.out.extend(i.to_le_bytes());
    }
    assert!(too_large(&p.finish()).contains("memo"));
}

// ---------------------------------------------------------------- archives

fn step_file() -> Vec<u8> {
    model_step_file(&model(), true)
}

fn convert(step: Vec<u8>) -> Result<TrmModel, TrmError> {
    let m = model();
    official::convert_bytes(
        step,
        &all_config_yaml(&m),
        Some(&dataset_json(&m)),
        &ConvertOptions::default(),
    )
    .map(|c| c.model)
}

#[test]
fn truncated_or_foreign_step_files() {
    let step = step_file();
    assert!(convert(step.clone()).is_ok());
    for len in [0, 4, 22, step.len() / 2, step.len() - 1] {
        assert!(
            matches!(
                convert(step[..len].to_vec()),
                Err(TrmError::Checkpoint { .. })
            ),
            "{len}"
        );
    }
    // The legacy (pre-1.6) format starts with a pickle.
    let legacy = Pickler::new().op(b'N').finish();
    let err = convert(legacy).unwrap_err().to_string();
    assert!(err.contains("legacy"), "{err}");
    // And the other way round: a step file given where a model file goes.
    let err = load(&step).unwrap_err().to_string();
    assert!(err.contains("trm convert"), "{err}");
    // A safetensors file given to convert.
    let err = convert(model().to_safetensors_bytes().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("zip"), "{err}");
    // An archive without data.pkl, or with a flipped byte (CRC).
    let mut no_pickle = step.clone();
    while let Some(at) = find(&no_pickle, b"data.pkl") {
        no_pickle[at + 7] = b'X';
    }
    let err = convert(no_pickle).unwrap_err().to_string();
    assert!(err.contains("no data.pkl"), "{err}");
    let mut flipped = step.clone();
    let at = find(&flipped, b"_orig_mod.model.inner.H_init").unwrap();
    flipped[at + 3] ^= 1;
    let err = convert(flipped).unwrap_err().to_string();
    assert!(
        err.to_lowercase().contains("checksum") || err.contains("CRC"),
        "{err}"
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An entry whose central-directory record claims more bytes than the
/// file holds is refused before it is read.
#[test]
fn zip_entry_claiming_more_than_the_file() {
    let mut step = step_file();
    let name = b"step_1/data/0";
    // The central directory record: signature, then sizes at +20 and +24,
    // the name at +46.
    let mut at = None;
    for (i, w) in step.windows(4).enumerate() {
        if w == [0x50, 0x4b, 0x01, 0x02] && step[i + 46..].starts_with(name) {
            at = Some(i);
        }
    }
    let at = at.expect("central directory record of data/0");
    step[at + 20..at + 28].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f]);
    match convert(step) {
        Err(TrmError::Checkpoint { reason, .. }) => {
            assert!(reason.contains("data/0"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_dtype_and_contradicting_dataset() {
    let m = model();
    let (mut t, mut storages) = model_state_dict(&m, OFFICIAL_PREFIX, false);
    // H_init as int64 of the same byte count would be 4 elements; give it 8.
    t[2].storage_class = "LongStorage".into();
    storages[2].1 = vec![0; 8 * 8];
    let step = torch_zip("s", &state_dict_pickle(&t), &storages);
    assert!(matches!(
        convert(step),
        Err(TrmError::TensorDtype { dtype, .. }) if dtype == "int64"
    ));
    // dataset.json contradicting the tensors.
    let dataset = dataset_json(&m).replace("\"seq_len\": 6", "\"seq_len\": 7");
    let err = official::convert_bytes(
        step_file(),
        &all_config_yaml(&m),
        Some(&dataset),
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TrmError::TensorShape { .. }), "{err}");
    // A tensor far larger than the configuration implies.
    let (mut t, mut storages) = model_state_dict(&m, OFFICIAL_PREFIX, false);
    t[0] = PickleTensor::contiguous(&t[0].name, "FloatStorage", "0", &[50_000, 8]);
    storages[0].1 = vec![0; 50_000 * 8 * 4];
    let err = convert(torch_zip("s", &state_dict_pickle(&t), &storages)).unwrap_err();
    assert!(
        matches!(&err, TrmError::TensorShape { actual, .. } if actual == &vec![50_000, 8]),
        "{err}"
    );
}

#[test]
fn bad_yaml_and_dataset_files() {
    let m = model();
    let yaml = all_config_yaml(&m);
    let dataset = dataset_json(&m);
    for (yaml, dataset) in [
        ("lr: 1\n".to_string(), dataset.clone()),
        ("arch: 3\n".to_string(), dataset.clone()),
        ("arch: &a {x: 1}\nb: *a\n".to_string(), dataset.clone()),
        ("arch: [unclosed\n".to_string(), dataset.clone()),
        (
            yaml.replace("hidden_size: 8", "hidden_size: many"),
            dataset.clone(),
        ),
        (
            yaml.replace("expansion: 2", "expansion: -2"),
            dataset.clone(),
        ),
        (yaml.clone(), "{\"seq_len\": -6}".to_string()),
        (yaml.clone(), "[]".to_string()),
        (yaml.clone(), "{".to_string()),
    ] {
        let result = official::convert_bytes(
            step_file(),
            &yaml,
            Some(&dataset),
            &ConvertOptions::default(),
        );
        assert!(
            matches!(result, Err(TrmError::Config(_))),
            "{yaml} {dataset}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------- batches

#[test]
fn oversize_batch_is_refused_with_a_way_out() {
    let c = config();
    let tokens = vec![1i32; 40 * c.seq_len];
    let bytes = safetensors_bytes(
        &[RawTensor::i32("inputs", vec![40, c.seq_len], &tokens)],
        None,
    );
    let per_puzzle = PuzzleBatch::state_bytes(&c, 1);
    let limit = per_puzzle * 10;
    match PuzzleBatch::from_safetensors_bytes_with_limit(&bytes, "input", &c, limit) {
        Err(TrmError::TooLarge(message)) => {
            assert!(message.contains("40 puzzles"), "{message}");
            assert!(message.contains("at most 10 puzzles"), "{message}");
            assert!(message.contains("TRM_MAX_BATCH_BYTES"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let ok = PuzzleBatch::from_safetensors_bytes_with_limit(&bytes, "input", &c, per_puzzle * 40);
    assert_eq!(ok.unwrap().len(), 40);
    // The official Sudoku model at 8 GiB: about 5000 puzzles at once.
    let sudoku = TrmConfig {
        seq_len: 81,
        vocab_size: 11,
        num_puzzle_identifiers: 1,
        hidden_size: 512,
        expansion: 4.0,
        puzzle_emb_ndim: 512,
        puzzle_emb_len: 16,
        ..c
    };
    let fits = trm_wgpu::batch::DEFAULT_MAX_BATCH_BYTES / PuzzleBatch::state_bytes(&sudoku, 1);
    assert!((4000..6000).contains(&fits), "{fits}");
    assert_eq!(PuzzleBatch::state_bytes(&sudoku, usize::MAX), u64::MAX);
}

#[test]
fn input_header_lying_about_the_batch() {
    let c = config();
    let header = format!(
        r#"{{"inputs": {{"dtype": "I32", "shape": [1099511627776, {}], "data_offsets": [0, 24]}}}}"#,
        c.seq_len
    );
    let bytes = raw_safetensors(&header, &[0u8; 24]);
    assert!(matches!(
        PuzzleBatch::from_safetensors_bytes(&bytes, "input", &c),
        Err(TrmError::Safetensors { .. })
    ));
}

// ---------------------------------------------------------------- the binary

#[test]
fn cli_reports_hostile_files_on_one_line() {
    let dir = temp_dir("hostile-cli");
    let m = model();
    let yaml = dir.join("all_config.yaml");
    std::fs::write(&yaml, all_config_yaml(&m)).unwrap();
    let path = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let out_path = dir.join("out.safetensors");
    let o = out_path.to_str().unwrap();
    let y = yaml.to_str().unwrap();

    // A malicious pickle in a torch.save archive.
    let evil = path("evil", &torch_zip("evil", &os_system_pickle(), &[]));
    assert_one_error_line(&trm(&["convert", &evil, "-c", y, "-o", o]), "`os.system`");
    assert!(!out_path.exists());
    // Truncated archive, missing YAML, a storage offset outside its data.
    let step = step_file();
    let cut = path("cut", &step[..step.len() / 2]);
    assert_one_error_line(&trm(&["convert", &cut, "-c", y, "-o", o]), "cut");
    let good = path("good", &step);
    assert_one_error_line(
        &trm(&["convert", &good, "-c", "/nonexistent.yaml", "-o", o]),
        "No such file",
    );
    let (mut t, storages) = model_state_dict(&m, OFFICIAL_PREFIX, false);
    t[0].offset = 1 << 20;
    let outside = path(
        "outside",
        &torch_zip("o", &state_dict_pickle(&t), &storages),
    );
    assert_one_error_line(
        &trm(&["convert", &outside, "-c", y, "-o", o]),
        "lies outside its storage",
    );

    // A configuration value with a newline in it.
    let sneaky = dir.join("sneaky.yaml");
    std::fs::write(
        &sneaky,
        all_config_yaml(&m).replace("pos_encodings: none", "pos_encodings: \"no\\nne\""),
    )
    .unwrap();
    assert_one_error_line(
        &trm(&["convert", &good, "-c", sneaky.to_str().unwrap(), "-o", o]),
        "pos_encodings",
    );

    // A model file whose header overflows.
    let header =
        r#"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}"#;
    let overflow = path("overflow.safetensors", &raw_safetensors(header, &[]));
    assert_one_error_line(
        &trm(&["info", "-m", &overflow]),
        "not a valid safetensors file",
    );

    // A batch beyond the memory limit.
    let model_path = dir.join("model.safetensors");
    m.save(&model_path).unwrap();
    let tokens = vec![1i32; 3 * m.config().seq_len];
    let input = path(
        "input.safetensors",
        &safetensors_bytes(
            &[RawTensor::i32(
                "inputs",
                vec![3, m.config().seq_len],
                &tokens,
            )],
            None,
        ),
    );
    let mp = model_path.to_str().unwrap();
    let run = |env: &[(&str, &str)]| trm_env(&["run", "-m", mp, "-i", &input, "-o", o], env);
    assert_one_error_line(&run(&[("TRM_MAX_BATCH_BYTES", "1000")]), "split the input");
    assert_one_error_line(
        &run(&[("TRM_MAX_BATCH_BYTES", "lots")]),
        "TRM_MAX_BATCH_BYTES",
    );
    let ok = run(&[("TRM_MAX_BATCH_BYTES", "100000000")]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

// ---------------------------------------------------------------- ARC .npy

/// A `.npy` preamble claiming a header far beyond the file is refused, for
/// every version's length field, and nothing of the claim is allocated (the
/// `arc` fuzzer's finding against ndarray-npy, which allocated it: 560
/// bytes claiming 662 MB; the in-tree reader compares the claim with the
/// bytes that follow before it slices them).
#[test]
fn npy_header_claiming_more_than_the_file() {
    let fixture = common::data_dir().join("arc/data");
    for (file, version, claim) in [
        ("test/all__puzzle_identifiers.npy", 3u8, 662_372_470u32),
        ("test/all__inputs.npy", 2, u32::MAX),
        ("test/all__puzzle_indices.npy", 1, 60_000),
    ] {
        let dir = temp_dir("hostile-npy");
        for name in [
            "identifiers.json",
            "test_puzzles.json",
            "test/dataset.json",
            "test/all__inputs.npy",
            "test/all__labels.npy",
            "test/all__puzzle_indices.npy",
            "test/all__puzzle_identifiers.npy",
            "test/all__group_indices.npy",
        ] {
            std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
            std::fs::copy(fixture.join(name), dir.join(name)).unwrap();
        }
        let mut bytes = b"\x93NUMPY".to_vec();
        bytes.extend([version, 0]);
        if version == 1 {
            bytes.extend((claim as u16).to_le_bytes());
        } else {
            bytes.extend(claim.to_le_bytes());
        }
        bytes.extend(b"{'descr': '<i4', 'fortran_order': False, 'shape': (108,), }\n");
        std::fs::write(dir.join(file), &bytes).unwrap();
        let Err(err) = trm_wgpu::arc::ArcDataset::open(&dir) else {
            panic!("{file}: a header beyond the file must be refused");
        };
        assert!(matches!(err, TrmError::Dataset { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("the header claims {claim} bytes")),
            "{file}: {err}"
        );
    }
}
