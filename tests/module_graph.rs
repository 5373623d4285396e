//! The crate's layers, read from its source: no two modules import each
//! other, and the engines share only the layers below them.
//!
//! What counts as an import: a path in code (comments and string literals
//! are skipped) that starts with `crate::` or `super::`, grouped ones
//! (`crate::{a, b::c}`) included, and a name the crate root re-exports
//! (`crate::TrmError`) counted as an import of the module that defines it.
//! A path names the deepest module it passes through. Modules are the
//! files under `src/` (`src/a/b.rs` is `a::b`, `src/a/mod.rs` is `a`);
//! the binary's `cli` is read alongside, and the crate roots (`lib.rs`,
//! `main.rs`) are no module. Pairs are checked twice: between files,
//! where a module and its own submodule count as one unit (the parent
//! declares the child, the child may use the parent's items), and between
//! top-level modules (`gpu::embed` as `gpu`). Not seen: imports written
//! relative to the current module (`self::x`, a child module's name), which
//! stay inside it, and macros that build paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// An import of module `to` by module `from`, at the first place seen.
type Edges = BTreeMap<(String, String), String>;

/// Every `.rs` file under `dir`, as (module path, source).
fn modules(src: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(src).expect("under src/");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                return None;
            }
            let source = std::fs::read_to_string(&path).expect("a readable source file");
            Some((parts.join("::"), source))
        })
        .collect()
}

/// `source` with comments and the contents of string and character
/// literals blanked (newlines kept, so lines still count).
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == '"' || (c == 'r' && matches!(next, Some('"' | '#')) && is_raw(&chars, i)) {
            // a string: plain (with escapes) or raw (r#"..."#)
            let raw = c == 'r';
            let mut hashes = 0;
            i += 1;
            while raw && chars[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            out.push('"');
            while i < chars.len() {
                if !raw && chars[i] == '\\' {
                    i += 2;
                    continue;
                }
                if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
            out.push('"');
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // a character literal ('x', '\n', '\u{..}'), not a lifetime
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` starts a raw string (not the end of a name).
fn is_raw(chars: &[char], i: usize) -> bool {
    let after_name = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    let mut j = i + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    !after_name && chars.get(j) == Some(&'"')
}

/// The paths in `code` that start with `crate::` or `super::`, absolute
/// (as segments), with the line each is on. `module` resolves `super`.
fn crate_paths(code: &str, module: &str) -> Vec<(Vec<String>, usize)> {
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == b':');
        let Some(rest) = code.get(i..) else {
            i += 1; // inside a character of several bytes
            continue;
        };
        let start = if rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if rest.starts_with("super::") {
            // each `super::` climbs one module from this file's
            let mut base: Vec<String> = module.split("::").map(str::to_string).collect();
            let mut len = 0;
            while code[i + len..].starts_with("super::") {
                base.pop();
                len += "super::".len();
            }
            Some((base, len))
        } else {
            None
        };
        match start {
            Some((base, len)) if at_word => {
                let line = code[..i].matches('\n').count() + 1;
                for tail in path_tails(&code[i + len..]) {
                    let mut path = base.clone();
                    path.extend(tail);
                    found.push((path, line));
                }
                i += len;
            }
            _ => i += 1,
        }
    }
    found
}

/// The segment lists a path continues with: `a::b::C` gives one,
/// `{a::x, b}` one per item (nested groups by their leading segments).
fn path_tails(text: &str) -> Vec<Vec<String>> {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let mut items = Vec::new();
        let (mut depth, mut item_start) = (0usize, 0usize);
        for (k, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&group[item_start..k]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[item_start..k]);
                    item_start = k + 1;
                }
                _ => {}
            }
        }
        return items
            .into_iter()
            .flat_map(|item| path_tails(item.trim()))
            .collect();
    }
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segments.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(after) if after.starts_with('{') => {
                return path_tails(after)
                    .into_iter()
                    .map(|tail| segments.iter().cloned().chain(tail).collect())
                    .collect();
            }
            Some(after) => rest = after,
            None => break,
        }
    }
    if segments.is_empty() {
        vec![]
    } else {
        vec![segments]
    }
}

/// What the crate root re-exports: a name to the module that defines it
/// (`TrmError` to `error`), from `lib.rs`'s `pub use` items.
fn root_exports(lib: &str, known: &BTreeSet<String>) -> BTreeMap<String, String> {
    let code = code_only(lib);
    let mut out = BTreeMap::new();
    for statement in code.split(';') {
        let Some(at) = statement.find("pub use ") else {
            continue;
        };
        for path in path_tails(&statement[at + "pub use ".len()..]) {
            let name = path.last().cloned().unwrap_or_default();
            if let Some(module) = deepest_module(&path, known) {
                out.insert(name, module);
            }
        }
    }
    out
}

/// The deepest known module on `path` (`gpu::embed::key` gives
/// `gpu::embed`), if any.
fn deepest_module(path: &[String], known: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains(m))
}

/// Module imports between distinct modules, each with where it was seen.
fn imports(files: &[(String, String)], lib: &str) -> Edges {
    let known: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let exports = root_exports(lib, &known);
    let mut edges = Edges::new();
    for (module, source) in files {
        for (path, line) in crate_paths(&code_only(source), module) {
            let target = deepest_module(&path, &known)
                .or_else(|| path.first().and_then(|name| exports.get(name).cloned()));
            if let Some(target) = target
                && target != *module
            {
                edges
                    .entry((module.clone(), target))
                    .or_insert_with(|| format!("{module} line {line}: {}", path.join("::")));
            }
        }
    }
    edges
}

/// Whether `a` is `b`'s ancestor or descendant (`gpu` and `gpu::embed`).
fn nested(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| inner.starts_with(&format!("{outer}::"));
    within(a, b) || within(b, a)
}

/// Pairs of modules that import each other, `(a, b)` with `a < b`, each
/// with the evidence both ways: between files (a module and its submodules
/// excepted), and between top-level modules.
fn mutual_imports(edges: &Edges) -> Vec<((String, String), String)> {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut top_edges = Edges::new();
    for ((from, to), seen) in edges {
        if top(from) != top(to) {
            top_edges
                .entry((top(from), top(to)))
                .or_insert_with(|| seen.clone());
        }
    }
    let mut found = Vec::new();
    for (level, edges) in [("modules", edges), ("top-level modules", &top_edges)] {
        for ((a, b), seen) in edges {
            if a < b
                && !nested(a, b)
                && let Some(back) = edges.get(&(b.clone(), a.clone()))
            {
                found.push((
                    (a.clone(), b.clone()),
                    format!("{level} {a} and {b} import each other ({seen}; {back})"),
                ));
            }
        }
    }
    found
}

fn crate_imports() -> Edges {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    imports(&modules(&src), &lib)
}

/// Sibling modules of the GPU engine that import each other today: each
/// kernel's module takes `KernelFile` from `kernels`, which lists every
/// kernel's key, and `context` and `layout` share the device. The GPU
/// engine's split by job (issue 27, item 2) is to remove them; a pair
/// gone must leave this list, and no pair may join it.
const GPU_SIBLINGS_AWAITING_THE_SPLIT: [(&str, &str); 10] = [
    ("gpu::context", "gpu::layout"),
    ("gpu::embed", "gpu::kernels"),
    ("gpu::halt", "gpu::kernels"),
    ("gpu::heads", "gpu::kernels"),
    ("gpu::kernels", "gpu::layout"),
    ("gpu::kernels", "gpu::mixer_step"),
    ("gpu::kernels", "gpu::noise"),
    ("gpu::kernels", "gpu::probe"),
    ("gpu::kernels", "gpu::spread"),
    ("gpu::kernels", "gpu::step_common"),
];

#[test]
fn no_two_modules_import_each_other() {
    let edges = crate_imports();
    // the scan sees the crate: a few imports that must be there
    for (from, to) in [
        ("cpu", "model"),
        ("gpu::embed", "model::maths"),
        ("checkpoint::model_file", "config::state_dict"),
        ("augment", "tasks::sudoku"),
    ] {
        assert!(
            edges.contains_key(&(from.to_string(), to.to_string())),
            "the scan missed {from} -> {to}; it reads: {:#?}",
            edges.keys().collect::<Vec<_>>()
        );
    }
    let cycles = mutual_imports(&edges);
    let known = |pair: &(String, String)| {
        GPU_SIBLINGS_AWAITING_THE_SPLIT.contains(&(pair.0.as_str(), pair.1.as_str()))
    };
    let new: Vec<&String> = cycles
        .iter()
        .filter(|(pair, _)| !known(pair))
        .map(|(_, seen)| seen)
        .collect();
    assert!(new.is_empty(), "{new:#?}");
    for (a, b) in GPU_SIBLINGS_AWAITING_THE_SPLIT {
        assert!(
            cycles.iter().any(|(pair, _)| pair.0 == a && pair.1 == b),
            "{a} and {b} no longer import each other: strike them from GPU_SIBLINGS_AWAITING_THE_SPLIT"
        );
    }
}

#[test]
fn the_engines_share_only_the_layers_below_them() {
    let edges = crate_imports();
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    // (importer, imported) pairs the layering forbids: the GPU and CPU
    // engines share the model's maths, not each other's code; the model
    // knows no file format (the checkpoint layer reads and writes it)
    let forbidden = [
        ("gpu", "cpu"),
        ("cpu", "gpu"),
        ("model", "checkpoint"),
        ("model", "cpu"),
        ("model", "gpu"),
        ("config", "model"),
    ];
    let broken: Vec<&String> = edges
        .iter()
        .filter(|((from, to), _)| forbidden.contains(&(top(from).as_str(), top(to).as_str())))
        .map(|(_, seen)| seen)
        .collect();
    assert!(broken.is_empty(), "imports across layers: {broken:#?}");
}

#[test]
fn the_scan_sees_planted_cycles_and_skips_comments_and_strings() {
    let lib = "pub mod a;\npub use error::{Result, TrmError};\n";
    let files = |a: &str, b: &str| {
        vec![
            ("a".to_string(), a.to_string()),
            ("b::inner".to_string(), b.to_string()),
            ("b".to_string(), "pub mod inner;".to_string()),
            ("error".to_string(), String::new()),
        ]
    };
    let planted = [
        ("use crate::b::inner::Thing;", "use crate::a;"),
        ("use crate::{b::inner, error};", "fn f() { crate::a::g() }"),
        ("use crate::b::{self, inner::X};", "use super::super::a::Y;"),
        (
            "fn f() -> crate::b::inner::T { todo!() }",
            "use crate::a as other;",
        ),
    ];
    for (a, b) in planted {
        let cycles = mutual_imports(&imports(&files(a, b), lib));
        assert_eq!(cycles.len(), 2, "{a} / {b}: {cycles:?}"); // files and top level
    }
    // a root re-export is its module's
    let edges = imports(&files("use crate::TrmError;", ""), lib);
    assert!(
        edges.contains_key(&("a".into(), "error".into())),
        "{edges:?}"
    );
    // none of these is an import
    let quiet = [
        ("// use crate::b::inner;", "/// see [`crate::a`]"),
        (
            r##"const S: &str = "crate::b::inner"; const R: &str = r#"crate::b"#;"##,
            "/* crate::a /* nested */ crate::a */ fn f<'a>(x: &'a str) -> char { '\"' }",
        ),
    ];
    for (a, b) in quiet {
        let edges = imports(&files(a, b), lib);
        assert!(mutual_imports(&edges).is_empty(), "{a} / {b}: {edges:?}");
        assert!(
            !edges.contains_key(&("a".into(), "b::inner".into())),
            "{a}: {edges:?}"
        );
    }
    // a parent and its child are one unit
    let family = vec![
        ("p".to_string(), "use crate::p::c::X;".to_string()),
        ("p::c".to_string(), "use super::Y;".to_string()),
    ];
    assert!(mutual_imports(&imports(&family, "")).is_empty());
}
