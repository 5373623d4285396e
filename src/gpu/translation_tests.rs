//! Every kernel variant the engine can build, translated by naga (wgpu's
//! own translator) to each shading language wgpu hands a driver: MSL
//! (Metal), HLSL (DX12; shader model 6.0 where subgroups need wave
//! intrinsics, 5.1 otherwise), SPIR-V (Vulkan; checked by `spirv-val` from
//! spirv-tools, which CI installs: `TRM_REQUIRE_SPIRV_VAL=1` makes its
//! absence a failure) and GLSL (GL; 4.30 and ES 3.10, the variants without
//! subgroups, which wgpu's GL backend does not offer).
//!
//! "Every variant": [`model_kernels`] (the keys the kernels' constructors
//! make) for models of both variants and HRM at the official Sudoku shape,
//! the ARC shape (S 916) and small ones with learned and no positions, at
//! each weight precision, on the devices the engine distinguishes: tiles
//! of depth 16 or 8 (16 KiB of workgroup memory, as a browser's default
//! limits, or Apple's 16352 bytes), with the subgroup or the workgroup lane
//! prelude (a browser's WebGPU has no subgroups), with and without the
//! workgroup-memory poisoning of the tests. A failure names the kernel,
//! the variant, the shape and the constants.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::Command;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};

use crate::config::{PosEncodings, TrmConfig};
use crate::weights::Precision;

use super::kernels::{DeviceKernels, KernelFile, KernelKey, model_kernels};
use super::step_common::{Lanes, least_workgroup_bytes};

/// The shapes: the published models' and small ones for the variants they
/// lack.
fn shapes() -> Vec<(&'static str, TrmConfig)> {
    let small = |pos: &str| {
        TrmConfig::from_json(&format!(
            r#"{{"seq_len": 13, "vocab_size": 7, "hidden_size": 40, "expansion": 2.5,
                "num_heads": 2, "H_cycles": 1, "L_cycles": 1, "L_layers": 1,
                "halt_max_steps": 1, "mlp_t": false, "pos_encodings": "{pos}"}}"#
        ))
        .unwrap()
    };
    let arc = TrmConfig::from_json(
        r#"{"seq_len": 900, "vocab_size": 12, "num_puzzle_identifiers": 1000,
            "hidden_size": 512, "expansion": 4, "num_heads": 8, "H_cycles": 3,
            "L_cycles": 4, "L_layers": 2, "halt_max_steps": 16, "mlp_t": false,
            "pos_encodings": "rope", "puzzle_emb_ndim": 512, "puzzle_emb_len": 16}"#,
    )
    .unwrap();
    let sudoku_attention = TrmConfig {
        mlp_t: false,
        pos_encodings: PosEncodings::Rope,
        ..TrmConfig::sudoku_extreme()
    };
    vec![
        ("Sudoku MLP-mixer", TrmConfig::sudoku_extreme()),
        ("Sudoku attention", sudoku_attention),
        ("ARC attention", arc),
        ("HRM Sudoku", TrmConfig::hrm_sudoku_extreme()),
        ("learned positions", small("learned")),
        ("no positions", small("none")),
    ]
}

/// The devices the engine builds different kernels for.
fn devices() -> Vec<DeviceKernels> {
    let mut devices = Vec::new();
    for sk in [16, 8] {
        for lanes in [Lanes::Subgroup, Lanes::Workgroup] {
            for poison in [false, true] {
                devices.push(DeviceKernels { sk, lanes, poison });
            }
        }
    }
    devices
}

/// A parsed and validated source.
struct Parsed {
    module: naga::Module,
    info: ModuleInfo,
}

/// naga's validator as wgpu sets it up for a device of the engine:
/// unpack2x16float (the f16 weight prelude) and, with the subgroup lane
/// prelude, the subgroup operations in compute.
fn validator(lanes: Lanes) -> Validator {
    let mut capabilities = Capabilities::default() | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if lanes == Lanes::Subgroup {
        capabilities |= Capabilities::SUBGROUP;
    }
    let mut validator = Validator::new(ValidationFlags::all(), capabilities);
    if lanes == Lanes::Subgroup {
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator
}

fn parse(key: &KernelKey) -> Result<Parsed, String> {
    let module = naga::front::wgsl::parse_str(key.source())
        .map_err(|e| format!("WGSL: {}", e.emit_to_string(key.source())))?;
    let info = validator(key.lanes)
        .validate(&module)
        .map_err(|e| format!("validation: {e:?}"))?;
    Ok(Parsed { module, info })
}

/// Whether `spirv-val` runs here.
fn spirv_val() -> bool {
    Command::new("spirv-val").arg("--version").output().is_ok()
}

/// Translates one key to every language; the failures, by language.
fn translate(key: &KernelKey, parsed: &Parsed, check_spirv: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let mut constants = naga::back::PipelineConstants::default();
    for &(name, value) in &key.constants {
        constants.insert(name.to_string(), value);
    }
    let stage = naga::ShaderStage::Compute;
    let (module, info) = match naga::back::pipeline_constants::process_overrides(
        &parsed.module,
        &parsed.info,
        Some((stage, key.entry)),
        &constants,
    ) {
        Ok(done) => done,
        Err(e) => return vec![format!("override constants: {e}")],
    };
    let subgroups = key.lanes == Lanes::Subgroup;
    if let Err(e) = check_workgroup_storage(key, &module, &info) {
        failures.push(e);
    }

    let msl_options = msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let msl_pipeline = msl::PipelineOptions {
        entry_point: Some((stage, key.entry.to_string())),
        ..Default::default()
    };
    if let Err(e) = msl::write_string(&module, &info, &msl_options, &msl_pipeline) {
        failures.push(format!("MSL: {e}"));
    }

    let hlsl_options = hlsl::Options {
        shader_model: if subgroups {
            hlsl::ShaderModel::V6_0
        } else {
            hlsl::ShaderModel::V5_1
        },
        ..Default::default()
    };
    let hlsl_pipeline = hlsl::PipelineOptions {
        entry_point: Some((stage, key.entry.to_string())),
    };
    let mut hlsl_out = String::new();
    if let Err(e) =
        hlsl::Writer::new(&mut hlsl_out, &hlsl_options, &hlsl_pipeline).write(&module, &info, None)
    {
        failures.push(format!("HLSL: {e}"));
    }

    let spv_options = spv::Options {
        lang_version: if subgroups { (1, 3) } else { (1, 0) },
        ..Default::default()
    };
    let spv_pipeline = spv::PipelineOptions {
        shader_stage: stage,
        entry_point: key.entry.to_string(),
    };
    match spv::write_vec(&module, &info, &spv_options, Some(&spv_pipeline)) {
        Err(e) => failures.push(format!("SPIR-V: {e}")),
        Ok(words) if check_spirv => {
            if let Err(e) = spirv_validate(&words, subgroups) {
                failures.push(format!("SPIR-V (spirv-val): {e}"));
            }
        }
        Ok(_) => {}
    }

    if !subgroups {
        for version in [glsl::Version::Desktop(430), glsl::Version::new_gles(310)] {
            let options = glsl::Options {
                version,
                ..Default::default()
            };
            let pipeline = glsl::PipelineOptions {
                shader_stage: stage,
                entry_point: key.entry.to_string(),
                multiview: None,
            };
            let mut out = String::new();
            let written = glsl::Writer::new(
                &mut out,
                &module,
                &info,
                &options,
                &pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write().map(|_| ()));
            if let Err(e) = written {
                failures.push(format!("GLSL {version}: {e}"));
            }
        }
    }
    failures
}

/// The workgroup storage an entry point names, in bytes, as WebGPU counts
/// it: every `var<workgroup>` the entry point (or a function it calls)
/// uses, at its size, whether or not a branch that touches it ever runs.
fn workgroup_storage(entry: &str, module: &naga::Module, info: &ModuleInfo) -> Result<u32, String> {
    let index = module
        .entry_points
        .iter()
        .position(|e| e.name == entry)
        .ok_or_else(|| format!("no entry point {entry}"))?;
    let uses = info.get_entry_point(index);
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| format!("layout: {e}"))?;
    Ok(module
        .global_variables
        .iter()
        .filter(|(handle, var)| {
            var.space == naga::AddressSpace::WorkGroup && !uses[*handle].is_empty()
        })
        .map(|(_, var)| layouter[var.ty].size)
        .sum())
}

/// Within the least workgroup memory of the adapters the engine builds the
/// key for (`device_kernels` picks tile depth and lane prelude by the
/// adapter's limit; the other kernels are built wherever the engine runs,
/// down to the 8 KiB it requires). Dawn and wgpu refuse a pipeline above
/// the device's limit, so a kernel over it fails only on the devices that
/// have no more: a browser's 16 KiB default, Apple's 16352 bytes.
fn check_workgroup_storage(
    key: &KernelKey,
    module: &naga::Module,
    info: &ModuleInfo,
) -> Result<(), String> {
    let sk = key.constants.iter().find(|(name, _)| *name == "SK");
    let limit = match sk {
        Some(&(_, depth)) => least_workgroup_bytes(depth as u32, key.lanes),
        None => least_workgroup_bytes(8, Lanes::Workgroup),
    };
    let used = workgroup_storage(key.entry, module, info)?;
    if used > limit {
        return Err(format!(
            "workgroup storage: {used} bytes, above the {limit} of the least adapter it is built for"
        ));
    }
    Ok(())
}

/// `spirv-val` on `words`, for Vulkan 1.1 (subgroups) or 1.0.
fn spirv_validate(words: &[u32], subgroups: bool) -> Result<(), String> {
    let mut file = tempfile_named("trm-kernel", "spv")?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    file.1.write_all(&bytes).map_err(|e| e.to_string())?;
    let env = if subgroups { "vulkan1.1" } else { "vulkan1.0" };
    let out = Command::new("spirv-val")
        .args(["--target-env", env])
        .arg(&file.0)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&file.0);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A new file in the temporary directory (no clash between test threads).
fn tempfile_named(stem: &str, ext: &str) -> Result<(std::path::PathBuf, std::fs::File), String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("{stem}-{}-{n}.{ext}", std::process::id()));
    let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    Ok((path, file))
}

#[test]
fn every_kernel_variant_translates_to_every_shading_language() {
    let check_spirv = spirv_val();
    if !check_spirv {
        assert!(
            std::env::var("TRM_REQUIRE_SPIRV_VAL").is_err(),
            "TRM_REQUIRE_SPIRV_VAL is set and spirv-val (Debian's spirv-tools) is missing"
        );
        eprintln!(
            "spirv-val not found (apt-get install spirv-tools): SPIR-V written, not validated"
        );
    }
    // each key once (the shapes and devices share many), with where it
    // first came from
    let mut keys: Vec<(KernelKey, String)> = Vec::new();
    let mut seen = HashSet::new();
    for (shape, config) in shapes() {
        for precision in Precision::ALL {
            for device in devices() {
                for key in model_kernels(&config, precision, device) {
                    if seen.insert(key.clone()) {
                        let variant = format!("{shape}, {device:?}");
                        keys.push((key, variant));
                    }
                }
            }
        }
    }
    // every file, and every entry point of the step-prelude files
    for file in KernelFile::ALL {
        assert!(
            keys.iter().any(|(k, _)| k.file == file),
            "{file:?} never built"
        );
    }
    let entries: HashSet<(KernelFile, &str)> =
        keys.iter().map(|(k, _)| (k.file, k.entry)).collect();
    assert_eq!(entries.len(), 13, "{entries:?}");
    let mut parsed: HashMap<(KernelFile, Precision, Lanes), Result<Parsed, String>> =
        HashMap::new();
    let mut failures = Vec::new();
    for (key, variant) in &keys {
        let source = parsed
            .entry((key.file, key.precision, key.lanes))
            .or_insert_with(|| parse(key));
        let found = match source {
            Ok(source) => translate(key, source, check_spirv),
            Err(e) => vec![e.clone()],
        };
        for failure in found {
            failures.push(format!(
                "{} ({variant}) with {:?}: {failure}",
                key.label(),
                key.constants
            ));
        }
    }
    eprintln!(
        "{} kernel variants translated to MSL, HLSL, SPIR-V{} and GLSL",
        keys.len(),
        if check_spirv { " (validated)" } else { "" }
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
