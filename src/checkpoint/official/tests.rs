use super::*;

#[test]
fn yaml_arch_section_becomes_json() {
    let yaml = "arch:\n  hidden_size: 64\n  expansion: 4\n  rms: 1.5e-5\n  mlp_t: true\n  pos_encodings: none\n  loss:\n    name: x\nlr: 1\n";
    let arch = parse_arch(yaml, "t").unwrap();
    assert_eq!(arch["hidden_size"], Json::from(64));
    assert_eq!(arch["rms"], Json::from(1.5e-5));
    assert_eq!(arch["mlp_t"], Json::Bool(true));
    assert_eq!(arch["pos_encodings"], Json::from("none"));
    assert!(arch["loss"].is_object());
}

#[test]
fn yaml_aliases_and_depth_are_refused() {
    let bomb = "a: &a [x, x]\nb: &b [*a, *a]\narch: {}\n";
    assert!(matches!(parse_arch(bomb, "t"), Err(TrmError::Config(m)) if m.contains("alias")));
    let deep = format!("arch: {}{}", "[".repeat(100), "]".repeat(100));
    assert!(parse_arch(&deep, "t").is_err());
    assert!(parse_arch("arch: [1]", "t").is_err());
    assert!(parse_arch("- 1", "t").is_err());
    assert!(parse_arch("arch: {a: 1, a: 2}", "t").is_err());
}

#[test]
fn widening_is_exact() {
    let bf = half::bf16::from_f32(1.5).to_le_bytes();
    assert_eq!(widen(StorageDtype::BF16, &bf), Some(vec![1.5]));
    assert_eq!(widen(StorageDtype::I64, &[0; 8]), None);
}
