//! From an official checkpoint's side files to the project's configuration:
//! `all_config.yaml` (a bounded YAML reader), `dataset.json`, shapes
//! inferred from the tensors, and the conversion itself.

use super::*;

/// A YAML document as JSON, built from the parser's events with bounded
/// depth and node count; aliases (`*name`) are refused, so a document cannot
/// expand beyond its size.
fn yaml_to_json(text: &str, what: &str) -> Result<Json> {
    enum Frame {
        Seq(Vec<Json>),
        Map(Map<String, Json>, Option<String>),
    }
    let bad = |reason: String| TrmError::Config(format!("{what}: {reason}"));
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut documents: Vec<Json> = Vec::new();
    let mut nodes = 0usize;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| bad(format!("not valid YAML: {e}")))?;
        let value = match event {
            Event::StreamEnd => break,
            Event::Alias(_) => {
                return Err(bad(format!(
                    "line {}: YAML aliases are not supported",
                    mark.line()
                )));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_YAML_DEPTH {
                    return Err(bad(format!("nests deeper than {MAX_YAML_DEPTH} levels")));
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq(Vec::new()),
                    _ => Frame::Map(Map::new(), None),
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(items)) => Json::Array(items),
                Some(Frame::Map(map, None)) => Json::Object(map),
                _ => return Err(bad("unbalanced YAML".into())),
            },
            Event::Scalar(text, style, _, _) => {
                if style == TScalarStyle::Plain {
                    match yaml_rust2::Yaml::from_str(&text) {
                        yaml_rust2::Yaml::Integer(i) => Json::from(i),
                        yaml_rust2::Yaml::Real(r) => r
                            .parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map_or(Json::String(r), Json::Number),
                        yaml_rust2::Yaml::Boolean(b) => Json::Bool(b),
                        yaml_rust2::Yaml::Null => Json::Null,
                        _ => Json::String(text),
                    }
                } else {
                    Json::String(text)
                }
            }
            _ => continue,
        };
        nodes += 1;
        if nodes > MAX_YAML_NODES {
            return Err(bad(format!("holds more than {MAX_YAML_NODES} values")));
        }
        match stack.last_mut() {
            None => documents.push(value),
            Some(Frame::Seq(items)) => items.push(value),
            Some(Frame::Map(map, key)) => match key.take() {
                None => {
                    let k = match value {
                        Json::String(s) => s,
                        Json::Number(n) => n.to_string(),
                        Json::Bool(b) => b.to_string(),
                        Json::Null => "null".into(),
                        _ => return Err(bad("a mapping key is not a scalar".into())),
                    };
                    *key = Some(k);
                }
                Some(k) => {
                    if map.contains_key(&k) {
                        return Err(bad(format!(
                            "key `{}` is given twice",
                            crate::error::printable(&k)
                        )));
                    }
                    map.insert(k, value);
                }
            },
        }
    }
    match documents.len() {
        0 => Ok(Json::Null),
        1 => Ok(documents.pop().unwrap_or(Json::Null)),
        n => Err(bad(format!("holds {n} YAML documents, not one"))),
    }
}

/// The `arch` section of an `all_config.yaml`, as a JSON object.
pub fn parse_arch(yaml: &str, what: &str) -> Result<Map<String, Json>> {
    let doc = yaml_to_json(yaml, what)?;
    match doc {
        Json::Object(mut top) => match top.remove("arch") {
            Some(Json::Object(arch)) => Ok(arch),
            Some(_) => Err(TrmError::Config(format!("{what}: `arch` is not a mapping"))),
            None => Err(TrmError::Config(format!(
                "{what}: no `arch` section (is this the all_config.yaml of the authors' training?)"
            ))),
        },
        _ => Err(TrmError::Config(format!(
            "{what}: not a YAML mapping (is this the all_config.yaml of the authors' training?)"
        ))),
    }
}

/// `seq_len`, `vocab_size` and `num_puzzle_identifiers` from a data set's
/// `dataset.json` (other fields are ignored; absent ones stay `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatasetInfo {
    /// Tokens per puzzle.
    pub seq_len: Option<usize>,
    /// Token ids.
    pub vocab_size: Option<usize>,
    /// Rows of the puzzle-embedding table.
    pub num_puzzle_identifiers: Option<usize>,
}

impl DatasetInfo {
    /// Parses a `dataset.json`.
    pub fn from_json(json: &str, what: &str) -> Result<Self> {
        let doc: Json = serde_json::from_str(json)
            .map_err(|e| TrmError::Config(format!("{what}: not valid JSON: {e}")))?;
        let Json::Object(map) = doc else {
            return Err(TrmError::Config(format!("{what}: not a JSON object")));
        };
        let field = |name: &str| -> Result<Option<usize>> {
            match map.get(name) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        TrmError::Config(format!(
                            "{what}: `{name}` must be a non-negative integer, got {v}"
                        ))
                    }),
            }
        };
        Ok(DatasetInfo {
            seq_len: field("seq_len")?,
            vocab_size: field("vocab_size")?,
            num_puzzle_identifiers: field("num_puzzle_identifiers")?,
        })
    }
}

/// How [`convert_with`] fills in and checks the configuration.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// `seq_len`, overriding `dataset.json` and the shapes.
    pub seq_len: Option<usize>,
    /// `vocab_size`, overriding `dataset.json` and the shapes.
    pub vocab_size: Option<usize>,
    /// `num_puzzle_identifiers`, overriding `dataset.json` and the shapes.
    pub num_puzzle_identifiers: Option<usize>,
    /// How strictly the tensors are taken (unexpected tensors).
    pub load: LoadOptions,
}

impl ConvertOptions {
    /// Sets `seq_len`.
    pub fn seq_len(mut self, value: usize) -> Self {
        self.seq_len = Some(value);
        self
    }

    /// Sets `vocab_size`.
    pub fn vocab_size(mut self, value: usize) -> Self {
        self.vocab_size = Some(value);
        self
    }

    /// Sets `num_puzzle_identifiers`.
    pub fn num_puzzle_identifiers(mut self, value: usize) -> Self {
        self.num_puzzle_identifiers = Some(value);
        self
    }

    /// Sets the load options.
    pub fn load(mut self, load: LoadOptions) -> Self {
        self.load = load;
        self
    }
}

/// A converted checkpoint and what the conversion decided.
#[derive(Debug)]
#[non_exhaustive]
pub struct Conversion {
    /// The model.
    pub model: TrmModel,
    /// Configuration fields read from the tensor shapes, with how.
    pub inferred: Vec<String>,
    /// Fields of the `arch` section that trm-wgpu does not know and ignored
    /// (the authors' training-only fields are ignored silently).
    pub ignored_fields: Vec<String>,
}

/// Converts an official checkpoint: `step_N`, its `all_config.yaml`, and
/// optionally the data set's `dataset.json` (without it, `vocab_size`,
/// `num_puzzle_identifiers` and, where the shapes determine it, `seq_len`
/// are read from the tensor shapes).
pub fn convert(
    step: impl AsRef<Path>,
    all_config_yaml: impl AsRef<Path>,
    dataset_json: Option<impl AsRef<Path>>,
) -> Result<TrmModel> {
    Ok(convert_with(
        step,
        all_config_yaml,
        dataset_json,
        &ConvertOptions::default(),
    )?
    .model)
}

/// [`convert`] with options, returning what was inferred and ignored too.
pub fn convert_with(
    step: impl AsRef<Path>,
    all_config_yaml: impl AsRef<Path>,
    dataset_json: Option<impl AsRef<Path>>,
    options: &ConvertOptions,
) -> Result<Conversion> {
    let yaml_path = all_config_yaml.as_ref();
    let yaml = read_text(yaml_path)?;
    let dataset = match dataset_json {
        Some(path) => {
            let path = path.as_ref();
            Some((read_text(path)?, path.display().to_string()))
        }
        None => None,
    };
    let mut checkpoint = OfficialCheckpoint::open(step)?;
    convert_checkpoint(
        &mut checkpoint,
        &yaml,
        &yaml_path.display().to_string(),
        dataset
            .as_ref()
            .map(|(text, what)| (text.as_str(), what.as_str())),
        options,
    )
}

/// [`convert_with`] from the files' contents: the checkpoint's bytes, the
/// YAML text and optionally the `dataset.json` text.
pub fn convert_bytes(
    step: Vec<u8>,
    all_config_yaml: &str,
    dataset_json: Option<&str>,
    options: &ConvertOptions,
) -> Result<Conversion> {
    let mut checkpoint = OfficialCheckpoint::from_bytes(step, "step")?;
    convert_checkpoint(
        &mut checkpoint,
        all_config_yaml,
        "all_config.yaml",
        dataset_json.map(|text| (text, "dataset.json")),
        options,
    )
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = read_limited(path, MAX_SIDE_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|_| TrmError::Config(format!("{}: not UTF-8 text", path.display())))
}

/// Converts an opened checkpoint with the text of its `all_config.yaml`
/// and of `dataset.json` (`(text, name)`), if any.
pub fn convert_checkpoint(
    checkpoint: &mut OfficialCheckpoint,
    all_config_yaml: &str,
    yaml_name: &str,
    dataset_json: Option<(&str, &str)>,
    options: &ConvertOptions,
) -> Result<Conversion> {
    let arch = parse_arch(all_config_yaml, yaml_name)?;
    let family = arch_of(arch.get("name"), yaml_name)?;
    let mut config = Map::new();
    config.insert("arch".into(), Json::from(family.as_str()));
    let mut ignored_fields = Vec::new();
    for (key, value) in arch {
        if key == "name" {
            continue;
        }
        if ARCH_FIELDS.contains(&key.as_str()) || DATASET_FIELDS.contains(&key.as_str()) {
            config.insert(key, value);
        } else if !TRAINING_FIELDS.contains(&key.as_str()) {
            ignored_fields.push(key);
        }
    }
    let dataset = match dataset_json {
        Some((text, what)) => DatasetInfo::from_json(text, what)?,
        None => DatasetInfo::default(),
    };
    for (name, explicit, from_dataset) in [
        ("seq_len", options.seq_len, dataset.seq_len),
        ("vocab_size", options.vocab_size, dataset.vocab_size),
        (
            "num_puzzle_identifiers",
            options.num_puzzle_identifiers,
            dataset.num_puzzle_identifiers,
        ),
    ] {
        if let Some(value) = explicit.or(from_dataset) {
            config.insert(name.to_string(), Json::from(value));
        }
    }
    let inferred = infer_from_shapes(&mut config, checkpoint)?;
    let config = TrmConfig::from_json(&Json::Object(config).to_string())?;
    let model = checkpoint.to_model(config, &options.load)?;
    Ok(Conversion {
        model,
        inferred,
        ignored_fields,
    })
}

/// Fills in the data-set fields the configuration lacks from the tensor
/// shapes, or says which cannot be inferred and how to supply them.
fn infer_from_shapes(
    config: &mut Map<String, Json>,
    checkpoint: &OfficialCheckpoint,
) -> Result<Vec<String>> {
    let mut inferred = Vec::new();
    let mut missing = Vec::new();
    let rows = |name: &str| {
        checkpoint
            .tensor(name)
            .and_then(|t| t.shape.first().copied())
    };
    let has = |config: &Map<String, Json>, key: &str| config.contains_key(key);

    if !has(config, "vocab_size") {
        let name = "inner.embed_tokens.embedding_weight";
        match rows(name) {
            Some(v) => {
                config.insert("vocab_size".into(), Json::from(v));
                inferred.push(format!("vocab_size = {v} (rows of {name})"));
            }
            None => missing.push(format!("vocab_size (the checkpoint lacks {name})")),
        }
    }

    // The architecture with placeholders tells the puzzle positions P.
    let mut probe = config.clone();
    for key in DATASET_FIELDS {
        probe.entry(key).or_insert(Json::from(1));
    }
    let probe = TrmConfig::from_json(&Json::Object(probe).to_string())?;

    if !has(config, "num_puzzle_identifiers") {
        if probe.puzzle_emb_ndim == 0 {
            config.insert("num_puzzle_identifiers".into(), Json::from(1));
            inferred
                .push("num_puzzle_identifiers = 1 (the model has no puzzle embedding)".to_string());
        } else {
            let name = "inner.puzzle_emb.weights";
            match rows(name) {
                Some(v) => {
                    config.insert("num_puzzle_identifiers".into(), Json::from(v));
                    inferred.push(format!("num_puzzle_identifiers = {v} (rows of {name})"));
                }
                None => missing.push(format!(
                    "num_puzzle_identifiers (the checkpoint lacks {name})"
                )),
            }
        }
    }

    if !has(config, "seq_len") {
        let p = probe.puzzle_emb_positions();
        let token_mixer = "inner.L_level.layers.0.mlp_t.gate_up_proj.weight";
        let positions = "inner.embed_pos.embedding_weight";
        let source = if probe.mlp_t {
            checkpoint
                .tensor(token_mixer)
                .and_then(|t| t.shape.get(1).copied())
                .map(|s| (s, format!("columns of {token_mixer}")))
        } else if probe.pos_encodings == PosEncodings::Learned {
            rows(positions).map(|s| (s, format!("rows of {positions}")))
        } else {
            None
        };
        match source {
            Some((s, how)) if s > p => {
                config.insert("seq_len".into(), Json::from(s - p));
                inferred.push(format!(
                    "seq_len = {} ({how}, {s}, minus {p} puzzle positions)",
                    s - p
                ));
            }
            Some((s, how)) => {
                return Err(TrmError::Config(format!(
                    "cannot infer seq_len: the {how} is {s}, not more than the {p} puzzle positions"
                )));
            }
            None if probe.mlp_t => {
                missing.push(format!("seq_len (the checkpoint lacks {token_mixer})"))
            }
            None if probe.pos_encodings == PosEncodings::Learned => {
                missing.push(format!("seq_len (the checkpoint lacks {positions})"))
            }
            None => missing.push(format!(
                "seq_len (no tensor of an attention model with pos_encodings `{}` depends on it)",
                probe.pos_encodings.as_str()
            )),
        }
    }

    if !missing.is_empty() {
        return Err(TrmError::Config(format!(
            "cannot infer {} from the checkpoint; give the data set's dataset.json (`trm convert --dataset`), or the values (`--seq-len`, `--vocab-size`, `--num-puzzle-identifiers`)",
            missing.join(", ")
        )));
    }
    Ok(inferred)
}
