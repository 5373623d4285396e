use super::*;

#[test]
fn swiglu_widths_match_the_official_sudoku_model() {
    assert_eq!(swiglu_inter(4.0, 512), 1536);
    assert_eq!(swiglu_inter(4.0, 97), 512);
    assert_eq!(swiglu_inter(4.0, 64), 256);
    // Python's round is half-to-even: 256.5 -> 256 (not 257 -> 512).
    assert_eq!(swiglu_inter(384.75, 1), 256);
}

fn sudoku_json() -> &'static str {
    r#"{"hidden_size": 512, "expansion": 4, "num_heads": 8, "H_cycles": 3, "L_cycles": 6,
        "L_layers": 2, "halt_max_steps": 16, "mlp_t": true, "pos_encodings": "none",
        "puzzle_emb_ndim": 512, "puzzle_emb_len": 16, "seq_len": 81, "vocab_size": 11,
        "num_puzzle_identifiers": 1}"#
}

#[test]
fn official_sudoku_sizes() {
    let c = TrmConfig::from_json(sudoku_json()).unwrap();
    assert_eq!(c.state_len(), 97);
    assert_eq!(c.channel_inter(), 1536);
    assert_eq!(c.token_inter(), 512);
    assert_eq!(c.recursion_steps_per_act_step(), 21);
    let gflop = c.flops_per_recursion_step() as f64 / 1e9;
    assert!((gflop - 1.22).abs() < 0.01, "{gflop}");
    // TRM.md: about 410 GFLOP per puzzle for the official evaluation.
    let per_puzzle = c.flops_per_puzzle() as f64 / 1e9;
    assert!((per_puzzle - 410.0).abs() < 3.0, "{per_puzzle}");
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 10000.0);
}

#[test]
fn sudoku_extreme_preset_is_the_official_shape() {
    assert_eq!(
        TrmConfig::sudoku_extreme(),
        TrmConfig::from_json(sudoku_json()).unwrap()
    );
    assert_eq!(TrmConfig::sudoku_extreme().parameter_count(), 5_030_402);
}

#[test]
fn json_round_trip() {
    let c = TrmConfig::from_json(sudoku_json()).unwrap();
    assert_eq!(TrmConfig::from_json(&c.to_json()).unwrap(), c);
}

#[test]
fn rejects_inconsistent_configurations() {
    let base: serde_json::Value = serde_json::from_str(sudoku_json()).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        TrmConfig::from_json(&c.to_string())
    };
    assert!(matches!(
        with("hidden_size", 0.into()),
        Err(TrmError::Config(_))
    ));
    assert!(matches!(
        with("L_cycles", 0.into()),
        Err(TrmError::Config(_))
    ));
    assert!(matches!(
        with("pos_encodings", "sinusoid".into()),
        Err(TrmError::Config(_))
    ));
    assert!(with("puzzle_emb_len", 0.into()).is_ok());
    let mut c = base.clone();
    c["puzzle_emb_ndim"] = 0.into();
    assert!(TrmConfig::from_json(&c.to_string()).is_err());
    c["puzzle_emb_len"] = 0.into();
    assert!(TrmConfig::from_json(&c.to_string()).is_ok());
    // attention needs heads that divide the width and an even RoPE head
    let mut c = base.clone();
    c["mlp_t"] = false.into();
    c["num_heads"] = 7.into();
    assert!(TrmConfig::from_json(&c.to_string()).is_err());
    c["hidden_size"] = 42.into();
    c["num_heads"] = 14.into();
    c["puzzle_emb_ndim"] = 42.into();
    c["pos_encodings"] = "rope".into();
    assert!(
        TrmConfig::from_json(&c.to_string()).is_err(),
        "odd head width"
    );
    c["pos_encodings"] = "learned".into();
    assert!(TrmConfig::from_json(&c.to_string()).is_ok());
    // a puzzle embedding wider than the positions given for it
    let mut c = base.clone();
    c["puzzle_emb_ndim"] = 1025.into();
    c["puzzle_emb_len"] = 2.into();
    assert!(TrmConfig::from_json(&c.to_string()).is_err());
    // absurd sizes
    assert!(with("hidden_size", (1u64 << 40).into()).is_err());
    assert!(with("expansion", (-1.0).into()).is_err());
}

#[test]
fn hrm_preset_is_the_published_shape() {
    let c = TrmConfig::hrm_sudoku_extreme();
    c.validate().unwrap();
    assert_eq!(c.state_len(), 82);
    // 8 blocks of 3.41M: HRM's "27M parameters"
    assert_eq!(c.parameter_count(), 27_276_802);
    assert_eq!(c.level_layers(Level::L), 0..4);
    assert_eq!(c.level_layers(Level::H), 4..8);
    assert_eq!(c.recursion_steps_per_act_step(), 6);
    let call = c.flops_per_net_call(Level::L);
    assert_eq!(call, c.flops_per_net_call(Level::H));
    assert_eq!(call, c.flops_per_recursion_step());
    let gflop = call as f64 / 1e9;
    assert!((gflop - 2.29).abs() < 0.01, "{gflop}");
    let per_puzzle = c.flops_per_puzzle() as f64 / 1e9;
    assert!((per_puzzle - 220.0).abs() < 1.0, "{per_puzzle}");
    assert_eq!(TrmConfig::from_json(&c.to_json()).unwrap(), c);
}

#[test]
fn arch_and_its_fields() {
    let trm = TrmConfig::from_json(sudoku_json()).unwrap();
    assert_eq!((trm.arch, trm.h_layers), (Arch::Trm, 0));
    assert_eq!(trm.level_layers(Level::H), 0..2);
    assert!(trm.to_json().contains(r#""arch":"trm""#));
    assert!(!trm.to_json().contains("H_layers"));
    // TRM's own configurations carry an unused H_layers
    let base: serde_json::Value = serde_json::from_str(sudoku_json()).unwrap();
    let mut c = base.clone();
    c["H_layers"] = 0.into();
    assert_eq!(TrmConfig::from_json(&c.to_string()).unwrap(), trm);
    // HRM: H_layers required and positive; its puzzle embedding takes
    // ceil(ndim / D) positions, and it halts on q_halt > q_continue
    c["arch"] = "hrm".into();
    c["mlp_t"] = false.into();
    c["puzzle_emb_len"] = serde_json::Value::Null;
    assert!(TrmConfig::from_json(&c.to_string()).is_err(), "H_layers 0");
    c["H_layers"] = 3.into();
    let hrm = TrmConfig::from_json(&c.to_string()).unwrap();
    assert_eq!((hrm.puzzle_emb_len, hrm.puzzle_emb_positions()), (0, 1));
    assert_eq!(hrm.level_layers(Level::H), 2..5);
    assert_eq!(hrm.stored_layers(), 5);
    assert!(hrm.halts(0.5, 0.25) && !hrm.halts(0.5, 0.75));
    assert!(trm.halts(0.5, 0.75) && !trm.halts(-0.5, -0.75));
    let mut no_h = c.clone();
    no_h.as_object_mut().unwrap().remove("H_layers");
    assert!(TrmConfig::from_json(&no_h.to_string()).is_err());
    c["puzzle_emb_len"] = 16.into();
    assert!(TrmConfig::from_json(&c.to_string()).is_err());
    c["puzzle_emb_len"] = 1.into();
    assert!(TrmConfig::from_json(&c.to_string()).is_ok());
    c["arch"] = "rnn".into();
    assert!(TrmConfig::from_json(&c.to_string()).is_err());
}

#[test]
fn puzzle_emb_len_zero_means_ceil() {
    let json = r#"{"hidden_size": 48, "expansion": 2, "num_heads": 2, "H_cycles": 2,
        "L_cycles": 2, "L_layers": 1, "halt_max_steps": 2, "mlp_t": false,
        "pos_encodings": "learned", "puzzle_emb_ndim": 80, "puzzle_emb_len": 0,
        "seq_len": 30, "vocab_size": 12, "num_puzzle_identifiers": 7}"#;
    let c = TrmConfig::from_json(json).unwrap();
    assert_eq!(c.puzzle_emb_positions(), 2);
    assert_eq!(c.state_len(), 32);
}
