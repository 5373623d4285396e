//! The page (`web/`) in a real browser, driven as a user would drive it:
//! headless Chromium on its WebGPU (SwiftShader, a software Vulkan, where
//! the machine has no GPU), through the DevTools protocol, clicking the
//! page's buttons, typing into its boxes and giving its file input files.
//! It builds the page (`web/build.sh`: the bindings for wasm32, then
//! wasm-bindgen), serves `web/` from a local server, and in one page
//! session checks what the page promises and each bug it once had (issue
//! 32); every failed check is listed at the end, not only the first:
//!
//! - without a WebGPU adapter (Chromium without its WebGPU switches) the
//!   page says so in one plain sentence with what to try, and disables
//!   what cannot work;
//! - Solve is above the fold at 1280 x 800, no plot is drawn before a run;
//! - out-of-range ACT steps are refused with a message;
//! - sample puzzles that need several ACT steps, solved with early halting
//!   (the solve program's, as `trm run --halt`), give PyTorch's answers and
//!   q_halt at every step, halt where PyTorch's q_halt crosses 0 and end
//!   valid; the puzzle picker draws the puzzle picked;
//! - a rejected puzzle shows its message with each prefix once, and a
//!   slider move after it throws nothing and shows the new, empty state;
//! - the bench's GFLOP/s is its net calls/s times the GFLOP per net call;
//! - every pipeline of the engine compiles in Chrome's WGSL compiler
//!   (Tint), both schedules agree with the CPU engine on each model;
//! - each progress bar reaches its end exactly with the last part of its
//!   work, and stays in view;
//! - model files: a bad one, one without an embedded configuration and a
//!   model that is not a Sudoku model each get a message naming the file
//!   once, the last with Solve disabled;
//! - Cancel stops a long solve; at 390 px wide nothing scrolls sideways;
//!   no script error at all; a screenshot of the page is not blank.
//!
//! Without Chromium, the wasm32 target or wasm-bindgen at the pinned version
//! it prints what is missing and passes, unless `TRM_REQUIRE_BROWSER=1`
//! (CI, `.ci/run`), where a missing tool or adapter fails it.
//! `TRM_CHROMIUM` names the browser binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// Sample puzzles solved (lines of `data/sudoku-easy/puzzles.txt`, the
/// first is line 1) and the ACT step at which each halts by PyTorch's
/// q_halt (its answer valid from then: `web/samples.json`), with at most
/// `ACT_STEPS` steps. Sized for SwiftShader on two cores.
const SOLVE_LINES: [usize; 2] = [12, 56];
const HALTS_AT: [usize; 2] = [3, 4];
const ACT_STEPS: usize = 6;
/// How long one piece of the page's work may take before the test fails.
const PAGE_LIMIT: Duration = Duration::from_secs(400);

fn repo() -> PathBuf {
    common::repo_dir()
}

/// A tool is missing: fail under `TRM_REQUIRE_BROWSER`, else say so and pass.
fn missing(what: &str) {
    if std::env::var_os("TRM_REQUIRE_BROWSER").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("TRM_REQUIRE_BROWSER is set and {what}");
    }
    // straight to stderr, past the harness's capture: a passing test's
    // output is otherwise hidden, and this note should be seen
    let _ = writeln!(
        std::io::stderr(),
        "note: the browser test did not run: {what} (install Chromium, \
         `rustup target add wasm32-unknown-unknown` and wasm-bindgen-cli at the version in \
         web/Cargo.toml; TRM_REQUIRE_BROWSER=1 makes this a failure)"
    );
}

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TRM_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find_map(|name| {
        let out = Command::new("which").arg(name).output().ok()?;
        let path = String::from_utf8(out.stdout).ok()?;
        let path = path.trim();
        (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    })
}

/// The wasm-bindgen crate version pinned in web/Cargo.toml.
fn pinned_wasm_bindgen() -> String {
    let manifest = std::fs::read_to_string(repo().join("web/Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("wasm-bindgen = \"="))
        .and_then(|rest| rest.split('"').next())
        .expect("web/Cargo.toml pins wasm-bindgen with =")
        .to_string()
}

/// What is missing to build the page, if anything.
fn missing_tools() -> Option<String> {
    let pinned = pinned_wasm_bindgen();
    let have = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match have {
        None => return Some(format!("wasm-bindgen {pinned} is not on PATH")),
        Some(v) if !v.ends_with(&pinned) => {
            return Some(format!("wasm-bindgen is `{v}`, the crate is {pinned}"));
        }
        _ => {}
    }
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !Path::new(&sysroot)
        .join("lib/rustlib/wasm32-unknown-unknown")
        .exists()
    {
        return Some("the wasm32-unknown-unknown target is not installed".into());
    }
    None
}

/// Serves the files under `root` on a free local port, one thread; only
/// GET of paths inside it.
fn serve(root: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &root);
            });
        }
    });
    port
}

fn answer(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/");
    let relative = if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    };
    let safe = !relative.contains("..");
    let file = root.join(relative.trim_start_matches('/'));
    match std::fs::read(&file).ok().filter(|_| safe) {
        Some(body) => {
            let kind = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                Some("wasm") => "application/wasm",
                Some("txt") => "text/plain",
                _ => "application/octet-stream",
            };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)
        }
        None => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

/// Headless Chromium, killed when dropped.
struct Browser {
    child: Child,
    profile: PathBuf,
    /// The DevTools port.
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Chromium's switches for WebGPU on SwiftShader (Linux without a GPU).
const WEBGPU_SWITCHES: [&str; 3] = [
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
    "--enable-unsafe-swiftshader",
];

fn launch(binary: &Path, url: &str, webgpu: bool) -> Browser {
    let profile = std::env::temp_dir().join(format!(
        "trm-browser-{}-{}",
        std::process::id(),
        if webgpu { "webgpu" } else { "plain" }
    ));
    let _ = std::fs::remove_dir_all(&profile);
    let mut child = Command::new(binary)
        .args(if webgpu { &WEBGPU_SWITCHES[..] } else { &[] })
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--window-size=1000,2200",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
    let stderr = child.stderr.take().unwrap();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if !sent && let Some(at) = line.find("ws://127.0.0.1:") {
                let port: String = line[at + 15..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let _ = send.send(port);
                sent = true;
            }
        }
    });
    let port = receive
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .and_then(|p| p.parse().ok());
    let mut browser = Browser {
        child,
        profile,
        port: 0,
    };
    browser.port = port.expect("Chromium did not print its DevTools address within 60 s");
    browser
}

/// A plain HTTP GET on the DevTools port.
fn devtools_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Chromium keeps the connection open: read the headers, then exactly
    // Content-Length bytes
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// The DevTools protocol on one page.
struct Page {
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    /// Every uncaught script error the page reported.
    exceptions: Vec<String>,
}

impl Page {
    fn attach(port: u16, url: &str) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws = loop {
            let list: Value =
                serde_json::from_str(&devtools_get(port, "/json/list")).unwrap_or(json!([]));
            let found = list.as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| {
                        t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(ws) = found {
                break ws;
            }
            assert!(Instant::now() < deadline, "the page never appeared: {list}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (socket, _) = tungstenite::client(ws.as_str(), stream).unwrap();
        Page {
            socket,
            next_id: 1,
            exceptions: Vec::new(),
        }
    }

    /// Sends `method` and waits up to `limit` for its answer (events are
    /// skipped; console messages are printed).
    fn call(&mut self, method: &str, params: Value, limit: Duration) -> Value {
        self.try_call(method, params, limit)
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// [`Page::call`], its protocol error returned.
    fn try_call(&mut self, method: &str, params: Value, limit: Duration) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .unwrap();
        let deadline = Instant::now() + limit;
        loop {
            assert!(
                Instant::now() < deadline,
                "{method} did not answer within {limit:?}"
            );
            let message = match self.socket.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("the DevTools connection failed: {e}"),
            };
            let Ok(text) = message.to_text() else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if value["method"] == "Runtime.consoleAPICalled" {
                let args: Vec<String> = value["params"]["args"]
                    .as_array()
                    .map(|a| a.iter().map(|v| v["value"].to_string()).collect())
                    .unwrap_or_default();
                eprintln!("console: {}", args.join(" "));
            }
            if value["method"] == "Runtime.exceptionThrown" {
                let details = &value["params"]["exceptionDetails"];
                let text = details["exception"]["description"]
                    .as_str()
                    .map_or_else(|| details.to_string(), str::to_string);
                eprintln!("page exception: {text}");
                self.exceptions.push(text);
            }
            if value["id"] == id {
                if let Some(error) = value.get("error") {
                    return Err(error.to_string());
                }
                return Ok(value["result"].clone());
            }
        }
    }

    /// Evaluates `expression` (awaiting a promise); its value.
    fn evaluate(&mut self, expression: &str, limit: Duration) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            limit,
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!(
                "`{expression}` threw: {}",
                exception["exception"]["description"]
                    .as_str()
                    .unwrap_or(&exception.to_string())
            );
        }
        result["result"]["value"].clone()
    }

    /// Waits until `window.trmReady` settles; its answer ("ok" or "not
    /// ready: why").
    fn ready(&mut self) -> String {
        let wait_ready = json!({
            "expression": "new Promise((ok) => { const wait = () => window.trmReady ? ok(window.trmReady) : setTimeout(wait, 50); wait(); })",
            "awaitPromise": true,
            "returnByValue": true,
        });
        // the first document may still be replaced by the page's: ask again
        for _ in 0..20 {
            match self.try_call(
                "Runtime.evaluate",
                wait_ready.clone(),
                Duration::from_secs(120),
            ) {
                Ok(value) => {
                    return value["result"]["value"]
                        .as_str()
                        .unwrap_or("no answer")
                        .to_string();
                }
                Err(e) if e.contains("context") => std::thread::sleep(Duration::from_millis(250)),
                Err(e) => panic!("waiting for the page: {e}"),
            }
        }
        "no answer".into()
    }

    /// Runs `script` (clicks, typing) and waits for the work it started
    /// (`window.trm.action`) to end.
    fn act(&mut self, script: &str) {
        self.act_on(&format!("window.trm.action = null; {script}"));
    }

    /// [`Page::act`] without clearing the last action first.
    fn act_on(&mut self, script: &str) {
        self.evaluate(
            &format!(
                "(async () => {{ {script}; \
                 while (!window.trm.action) await new Promise((r) => setTimeout(r, 20)); \
                 await window.trm.action; return true; }})()"
            ),
            PAGE_LIMIT,
        );
    }

    /// Gives the page's file input `path`, as a user choosing that file,
    /// and waits for the load to end.
    fn choose_file(&mut self, path: &Path) {
        self.evaluate("window.trm.action = null", Duration::from_secs(10));
        let document = self.call("DOM.getDocument", json!({}), Duration::from_secs(30));
        let node = self.call(
            "DOM.querySelector",
            json!({"nodeId": document["root"]["nodeId"], "selector": "#file"}),
            Duration::from_secs(30),
        );
        self.call(
            "DOM.setFileInputFiles",
            json!({"files": [path.display().to_string()], "nodeId": node["nodeId"]}),
            Duration::from_secs(30),
        );
        // the protocol sets the files; the change event a user's choice
        // fires comes from it in Chromium, else from here
        self.act_on(
            "for (let i = 0; i < 40 && !window.trm.action; i++) await new Promise((r) => setTimeout(r, 50));
             if (!window.trm.action) document.getElementById('file').dispatchEvent(new Event('change'))",
        );
    }

    /// The window's size for the page (CSS pixels), or back to the
    /// browser's own with `None`.
    fn window(&mut self, size: Option<(u32, u32)>) {
        match size {
            Some((width, height)) => self.call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
                Duration::from_secs(30),
            ),
            None => self.call(
                "Emulation.clearDeviceMetricsOverride",
                json!({}),
                Duration::from_secs(30),
            ),
        };
    }
}

/// The checks that failed, all reported at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("FAILED: {what}");
            self.0.push(what);
        }
    }
}

/// Whether the progress reports of `label` (the page's `window.trm.progress`)
/// reach their end with the last one and not before.
fn progress_ends_with_work(progress: &Value, label: &str) -> Result<(), String> {
    let reports: Vec<(u64, u64)> = progress
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["label"] == label)
        .map(|p| {
            (
                p["done"].as_u64().unwrap_or(0),
                p["total"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let Some((&(done, total), before)) = reports.split_last() else {
        return Err(format!("{label}: no progress reported"));
    };
    if done != total || total == 0 {
        return Err(format!(
            "{label}: the last report is {done} of {total}: {reports:?}"
        ));
    }
    if before.iter().any(|&(d, t)| t > 0 && d >= t) {
        return Err(format!("{label}: full before the work ended: {reports:?}"));
    }
    Ok(())
}

/// The page's `web/samples.json`: line, first valid step, first halting
/// step of each sample it offers.
fn page_samples() -> Vec<(usize, Option<usize>, Option<usize>)> {
    let text = std::fs::read_to_string(repo().join("web/samples.json")).unwrap();
    let samples: Value = serde_json::from_str(&text).unwrap();
    samples["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let step = |key: &str| s[key].as_u64().map(|v| v as usize);
            (
                s["line"].as_u64().unwrap() as usize,
                step("valid_at"),
                step("halts_at"),
            )
        })
        .collect()
}

/// The model files the test gives the page's file input: not a
/// safetensors file, a safetensors file without a configuration, and a
/// model that is not a Sudoku model.
fn model_files(dir: &Path) -> [PathBuf; 3] {
    std::fs::create_dir_all(dir).unwrap();
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, [1u8, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    let plain = dir.join("noconfig.safetensors");
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(&plain, bytes).unwrap();
    let maze = dir.join("maze.safetensors");
    let config = trm_wgpu::TrmConfig::from_json(
        r#"{"seq_len": 25, "vocab_size": 6, "num_puzzle_identifiers": 1, "hidden_size": 16,
            "expansion": 2, "num_heads": 2, "H_cycles": 1, "L_cycles": 1, "L_layers": 1,
            "halt_max_steps": 2, "mlp_t": true, "pos_encodings": "none", "puzzle_emb_ndim": 0}"#,
    )
    .unwrap();
    let model = trm_wgpu::TrmModel::random(config, 5, 0.5).unwrap();
    std::fs::write(&maze, model.to_safetensors_bytes().unwrap()).unwrap();
    [bad, plain, maze]
}

/// The spread of the screenshot's luminance (0 for a blank page) and its
/// distinct colours.
fn picture_spread(png_bytes: &[u8]) -> (f64, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    let lum: Vec<f64> = pixels[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|p| {
            colours.insert(p[..3.min(channels)].to_vec());
            let (r, g, b) = if channels >= 3 {
                (p[0], p[1], p[2])
            } else {
                (p[0], p[0], p[0])
            };
            0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b)
        })
        .collect();
    let mean = lum.iter().sum::<f64>() / lum.len() as f64;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64;
    (var.sqrt(), colours.len())
}

#[test]
fn the_page_solves_benches_and_builds_every_pipeline_in_chromium() {
    let Some(binary) = chromium() else {
        return missing("no Chromium was found (chromium, chromium-browser, google-chrome)");
    };
    if let Some(what) = missing_tools() {
        return missing(&what);
    }
    let mut failures = Failures::default();
    let reference = common::sudoku_easy_reference();
    let puzzles_txt = std::fs::read_to_string(repo().join("data/sudoku-easy/puzzles.txt")).unwrap();
    let lines: Vec<&str> = puzzles_txt
        .lines()
        .map(str::trim)
        .filter(|l| l.len() == 81)
        .collect();
    // whether answer tokens (digits as 2..=10) solve line `index`
    let valid = |index: usize, tokens: &[f32]| {
        if !tokens.iter().all(|&t| (2.0..=10.0).contains(&t)) {
            return false;
        }
        let answer: String = tokens
            .iter()
            .map(|&t| char::from(b'0' + (t as u8 - 1)))
            .collect();
        match (
            trm_wgpu::tasks::sudoku::Grid::parse(lines[index]),
            trm_wgpu::tasks::sudoku::Grid::parse(&answer),
        ) {
            (Ok(puzzle), Ok(grid)) => grid.solves(&puzzle),
            _ => false,
        }
    };

    // the samples the page offers need the ACT steps it says (PyTorch's
    // answers and q_halt)
    for (line, valid_at, halts_at) in page_samples() {
        let i = line - 1;
        let first = |hit: &dyn Fn(usize) -> bool| (1..=16).find(|&k| hit(k));
        let found_valid = first(&|k| {
            valid(
                i,
                &reference[&format!("answer.step{k}")][i * 81..(i + 1) * 81],
            )
        });
        let found_halt = first(&|k| reference[&format!("q_halt_logits.step{k}")][i] > 0.0);
        failures.check(found_valid == valid_at && found_halt == halts_at, || {
            format!(
                "web/samples.json, line {line}: says valid at {valid_at:?}, halting at {halts_at:?}; \
                 PyTorch's answers are valid at {found_valid:?}, halt at {found_halt:?}"
            )
        });
    }

    let started = Instant::now();
    // the wasm build in a target directory of its own: this test runs
    // inside `cargo test`, which may hold the main one
    let build = Command::new("bash")
        .arg(repo().join("web/build.sh"))
        .env("CARGO_TARGET_DIR", repo().join("target/web"))
        .status()
        .unwrap();
    assert!(build.success(), "web/build.sh failed");
    let built = started.elapsed();
    eprintln!("browser test: page built in {:.1} s", built.as_secs_f64());
    let port = serve(repo().join("web"));
    let url = format!("http://127.0.0.1:{port}/");
    let files = model_files(
        &std::env::temp_dir().join(format!("trm-browser-files-{}", std::process::id())),
    );

    let run_started = Instant::now();
    let browser = launch(&binary, &url, true);
    let mut page = Page::attach(browser.port, &url);
    page.call("Runtime.enable", json!({}), Duration::from_secs(30));
    // the page opens the GPU and loads the bundled model by itself
    let ready = page.ready();
    if ready != "ok" {
        // no WebGPU or no adapter in this browser: a missing tool, unless
        // the page failed for another reason
        if ready.contains("WebGPU") {
            return missing(&format!("Chromium has no WebGPU adapter here: {ready}"));
        }
        panic!("the page did not start: {ready}");
    }
    eprintln!("browser test: the page is ready");
    let adapter = page.evaluate(
        "document.getElementById('adapter-name').textContent",
        Duration::from_secs(10),
    );
    eprintln!("adapter: {adapter}");

    // the first view on a 1280 x 800 screen: solving, no empty plots, the
    // adapter's details folded
    page.window(Some((1280, 800)));
    let first_view = page.evaluate(
        "(() => { const $ = (id) => document.getElementById(id); return {
            solve_bottom: $('solve').getBoundingClientRect().bottom,
            grid_top: $('grid').getBoundingClientRect().top,
            plots_hidden: $('qhalt-plot').hasAttribute('hidden') && $('bench-plot').hasAttribute('hidden')
              && $('qhalt-plot').getBoundingClientRect().height === 0
              && $('bench-plot').getBoundingClientRect().height === 0,
            adapter_folded: !$('adapter-section').open,
            solve_enabled: !$('solve').disabled }; })()",
        Duration::from_secs(10),
    );
    failures.check(
        first_view["solve_bottom"].as_f64().unwrap_or(f64::MAX) <= 800.0
            && first_view["grid_top"].as_f64().unwrap_or(f64::MAX) < 800.0
            && first_view["plots_hidden"] == true
            && first_view["adapter_folded"] == true
            && first_view["solve_enabled"] == true,
        || format!("first view at 1280 x 800: {first_view}"),
    );

    // ACT steps out of range: refused with a message, nothing runs
    page.act("document.getElementById('act-steps').value = '0'; document.getElementById('solve').click()");
    let refused = page.evaluate(
        "({ error: document.getElementById('solve-error').textContent,
            ran: window.trm.progress.some((p) => p.label === 'solving') })",
        Duration::from_secs(10),
    );
    let error = refused["error"].as_str().unwrap_or("");
    failures.check(
        error.contains("ACT steps") && error.contains("1 to 64") && refused["ran"] == false,
        || format!("ACT steps 0: {refused}"),
    );

    // samples that need several ACT steps, with early halting: PyTorch's
    // answers and q_halt at every step until each halts, its answer kept
    // after, valid at the end
    let text: Vec<&str> = SOLVE_LINES.iter().map(|&l| lines[l - 1]).collect();
    page.act(&format!(
        "document.getElementById('puzzle').value = {}; document.getElementById('act-steps').value = '{ACT_STEPS}';
         document.getElementById('halt').checked = true; document.getElementById('solve').click()",
        json!(text.join("\n"))
    ));
    let solved = page.evaluate("window.trm.solve", PAGE_LIMIT);
    let steps = solved["steps"].as_array().cloned().unwrap_or_default();
    let last_step = *HALTS_AT.iter().max().unwrap();
    failures.check(steps.len() == last_step, || {
        format!(
            "early halting: {} ACT steps run, {last_step} expected (the last puzzle halts there)",
            steps.len()
        )
    });
    for (k, step) in steps.iter().enumerate() {
        let k = k + 1;
        let tokens: Vec<f32> = step["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap() as f32)
            .collect();
        for (p, &line) in SOLVE_LINES.iter().enumerate() {
            let i = line - 1;
            // after halting, a puzzle keeps the answer of its halting step
            let at = k.min(HALTS_AT[p]);
            let expected = &reference[&format!("answer.step{at}")][i * 81..(i + 1) * 81];
            let got = &tokens[p * 81..(p + 1) * 81];
            let wrong = got.iter().zip(expected).filter(|(a, b)| a != b).count();
            failures.check(wrong == 0, || {
                format!("ACT step {k}, line {line}: {wrong} cells differ from PyTorch's answers")
            });
            let q = step["q_halt"][p].as_f64().unwrap_or(f64::NAN) as f32;
            let e = reference[&format!("q_halt_logits.step{at}")][i];
            failures.check((q - e).abs() <= 1e-3 * e.abs().max(1.0), || {
                format!("ACT step {k}, line {line}: q_halt {q}, PyTorch {e}")
            });
            let halted = step["halted"][p].as_u64().map(|h| h as usize);
            let expected_halt = (k >= HALTS_AT[p]).then_some(HALTS_AT[p]);
            failures.check(halted == expected_halt, || {
                format!("ACT step {k}, line {line}: halted {halted:?}, {expected_halt:?} expected")
            });
        }
    }
    if let Some(last) = steps.last() {
        failures.check(last["valid"] == json!([true, true]), || {
            format!("the samples do not end valid: {}", last["valid"])
        });
    }
    if let Err(e) = progress_ends_with_work(
        &page.evaluate("window.trm.progress", Duration::from_secs(10)),
        "solving",
    ) {
        failures.check(false, || e);
    }
    // the picker draws the puzzle picked; the slider goes back a step
    let picked = page.evaluate(
        "(() => { const $ = (id) => document.getElementById(id);
            $('which').value = '1'; $('which').dispatchEvent(new Event('change'));
            const grid = [...$('grid').children].map((c) => c.textContent || '.').join('');
            $('step-slider').value = '1'; $('step-slider').dispatchEvent(new Event('input'));
            return { grid, label: $('step-label').textContent }; })()",
        Duration::from_secs(10),
    );
    if let Some(last) = steps.last() {
        failures.check(picked["grid"] == last["answers"][1], || {
            format!(
                "puzzle 2 picked: the grid shows {}, its answer is {}",
                picked["grid"], last["answers"][1]
            )
        });
    }
    failures.check(
        picked["label"]
            .as_str()
            .unwrap_or("")
            .starts_with("after ACT step 1:"),
        || format!("slider at 1: {}", picked["label"]),
    );

    // a rejected puzzle: its message with each prefix once; then a slider
    // move throws nothing and shows the new state, no solve
    let exceptions_before = page.exceptions.len();
    page.act("document.getElementById('puzzle').value = '1234x'; document.getElementById('solve').click()");
    let rejected = page.evaluate(
        "(() => { const $ = (id) => document.getElementById(id);
            const slider = $('step-slider');
            slider.value = '2'; slider.dispatchEvent(new Event('input'));
            return { error: $('solve-error').textContent, slider_disabled: slider.disabled,
              label: $('step-label').textContent, plot_hidden: $('qhalt-plot').getBoundingClientRect().height === 0,
              rows: $('steps').rows.length }; })()",
        Duration::from_secs(10),
    );
    // let a throw from the event reach the protocol's events
    page.evaluate(
        "new Promise((r) => setTimeout(() => r(true), 200))",
        Duration::from_secs(10),
    );
    let error = rejected["error"].as_str().unwrap_or("");
    failures.check(
        error.starts_with("input: line 1: ")
            && error.matches("input:").count() == 1
            && error.matches("line 1").count() == 1,
        || format!("a rejected puzzle's message: `{error}`"),
    );
    failures.check(
        page.exceptions.len() == exceptions_before
            && rejected["slider_disabled"] == true
            && rejected["label"] == ""
            && rejected["plot_hidden"] == true
            && rejected["rows"] == 0,
        || {
            format!(
                "the slider after a rejected solve: {rejected}, exceptions {:?}",
                &page.exceptions[exceptions_before..]
            )
        },
    );

    // the bench at batch 2 (the fused schedule; the spread one runs in the
    // pipeline check): SwiftShader takes seconds per call at this size.
    // GFLOP/s is net calls/s times the GFLOP of one net call.
    page.act(
        "document.getElementById('batches').value = '2'; document.getElementById('seconds').value = '0.5';
         document.getElementById('bench').click()",
    );
    let bench = page.evaluate(
        "({ rows: window.trm.bench, cells: [...document.getElementById('bench-rows').rows].slice(1)
            .map((r) => [...r.cells].map((c) => c.textContent)) })",
        Duration::from_secs(10),
    );
    let gflop_per_net_call =
        trm_wgpu::TrmConfig::sudoku_extreme().flops_per_recursion_step() as f64 / 1e9;
    let rows = bench["rows"].as_array().cloned().unwrap_or_default();
    failures.check(rows.len() == 1, || format!("bench rows: {bench}"));
    for (row, cells) in rows
        .iter()
        .zip(bench["cells"].as_array().into_iter().flatten())
    {
        let rate = row["net_calls_per_second"].as_f64().unwrap_or(0.0);
        let gflops = row["gflops"].as_f64().unwrap_or(0.0);
        let expected = rate * gflop_per_net_call;
        failures.check(
            rate.is_finite() && rate > 0.0 && (gflops - expected).abs() <= 1e-9 * expected,
            || format!("bench: GFLOP/s {gflops}, net calls/s {rate} x {gflop_per_net_call} GFLOP = {expected}: {row}"),
        );
        failures.check(cells[4] == json!(format!("{expected:.3}")), || {
            format!(
                "bench table: GFLOP/s shown as {}, {expected:.3} expected",
                cells[4]
            )
        });
        eprintln!("bench: {row}");
    }

    // model files as a user gives them: each message names the file once;
    // a model that is not a Sudoku model loads with Solve off
    let [bad, plain, maze] = &files;
    page.choose_file(bad);
    let message = page.evaluate(
        "document.getElementById('model-error').textContent",
        Duration::from_secs(10),
    );
    let message = message.as_str().unwrap_or("");
    failures.check(message.matches("bad.safetensors").count() == 1, || {
        format!("a bad model file's message: `{message}`")
    });
    page.choose_file(plain);
    let message = page.evaluate(
        "document.getElementById('model-error').textContent",
        Duration::from_secs(10),
    );
    let message = message.as_str().unwrap_or("");
    failures.check(
        message.matches("noconfig.safetensors").count() == 1
            && message.contains("trm convert")
            && !message.contains("pass a configuration"),
        || format!("a file without a configuration: `{message}`"),
    );
    page.choose_file(maze);
    let loaded = page.evaluate(
        "({ info: document.getElementById('model-info').textContent,
            error: document.getElementById('model-error').textContent,
            solve_disabled: document.getElementById('solve').disabled })",
        Duration::from_secs(10),
    );
    failures.check(
        loaded["info"]
            .as_str()
            .unwrap_or("")
            .contains("Not a 9 x 9 Sudoku model")
            && loaded["error"] == ""
            && loaded["solve_disabled"] == true,
        || format!("a model that is not a Sudoku model: {loaded}"),
    );
    page.act("document.getElementById('bundled').click()");
    let back = page.evaluate(
        "!document.getElementById('solve').disabled",
        Duration::from_secs(10),
    );
    failures.check(back == true, || {
        "Solve stays off after the bundled model is back".into()
    });

    // Cancel stops a long solve after the step under way; the progress
    // bar, fixed at the bottom, is in view with the page at its top
    page.window(Some((1280, 800)));
    let cancelled = page.evaluate(
        &format!(
            "(async () => {{ const $ = (id) => document.getElementById(id);
                window.scrollTo(0, 0);
                $('puzzle').value = {}; $('act-steps').value = '64'; $('halt').checked = false;
                window.trm.action = null; $('solve').click();
                while (!(window.trm.solve?.steps.length >= 1)) await new Promise((r) => setTimeout(r, 50));
                const bar = $('progress').getBoundingClientRect();
                const in_view = !$('progress').hidden && bar.top >= 0 && bar.bottom <= window.innerHeight;
                const time = $('progress-time').textContent;
                $('cancel').click();
                await window.trm.action;
                return {{ in_view, time, steps: window.trm.solve.steps.length, cancelled: !!window.trm.solve.cancelled,
                  status: $('status').textContent, solve_enabled: !$('solve').disabled, error: $('solve-error').textContent }}; }})()",
            json!(lines[27])
        ),
        PAGE_LIMIT,
    );
    failures.check(
        cancelled["cancelled"] == true
            && cancelled["steps"].as_u64().unwrap_or(64) < 64
            && cancelled["status"]
                .as_str()
                .unwrap_or("")
                .contains("cancelled")
            && cancelled["solve_enabled"] == true
            && cancelled["error"] == "",
        || format!("Cancel: {cancelled}"),
    );
    failures.check(
        cancelled["in_view"] == true
            && cancelled["time"].as_str().unwrap_or("").contains("elapsed"),
        || format!("the progress bar while solving: {cancelled}"),
    );

    // every pipeline compiled in Tint, and both schedules agree with the CPU
    // engine (compiled to wasm beside them), as `trm check` does
    page.act("document.getElementById('pipelines').click()");
    let cases = page.evaluate("window.trm.pipelines", PAGE_LIMIT);
    let cases = cases.as_array().cloned().unwrap_or_default();
    // 4 models on 2 devices, and the two step kernels at 3 reduced
    // precisions on the first
    failures.check(cases.len() == 14, || {
        format!("{} pipeline cases: {cases:?}", cases.len())
    });
    for precision in ["f16", "bf16", "int8"] {
        let n = cases.iter().filter(|c| c["precision"] == precision).count();
        failures.check(n == 2, || format!("{precision}: {n} cases"));
    }
    let checked = cases.iter().filter(|c| !c["passed"].is_null()).count();
    failures.check(checked == 4, || {
        format!("{checked} models checked in both schedules, 4 expected")
    });
    for case in &cases {
        if !case["passed"].is_null() {
            failures.check(case["passed"] == true, || {
                format!("differs from the CPU engine: {case}")
            });
            for schedule in ["fused_vs_cpu", "spread_vs_cpu"] {
                let diff = case[schedule].as_f64().unwrap_or(f64::INFINITY);
                failures.check(diff <= trm_wgpu::check::TOLERANCE, || {
                    format!("{schedule}: {case}")
                });
            }
        }
        failures.check(case["pipelines"].as_u64().unwrap_or(0) > 0, || {
            format!("no pipelines: {case}")
        });
        eprintln!("pipelines: {case}");
    }
    let progress = page.evaluate("window.trm.progress", Duration::from_secs(10));
    for label in ["building every pipeline", "bench"] {
        if let Err(e) = progress_ends_with_work(&progress, label) {
            failures.check(false, || e);
        }
    }

    // a phone's width: nothing scrolls sideways (tables scroll in their
    // cards)
    page.window(Some((390, 844)));
    // (against 390, not innerWidth: a phone's browser zooms out to fit a
    // page that overflows, and innerWidth grows with it)
    let narrow = page.evaluate(
        "new Promise((r) => setTimeout(() => r({ scroll: document.documentElement.scrollWidth, width: window.innerWidth }), 200))",
        Duration::from_secs(10),
    );
    failures.check(narrow["scroll"].as_u64().unwrap_or(u64::MAX) <= 390, || {
        format!("at 390 px the page scrolls sideways: {narrow}")
    });
    page.window(None);

    // the page shows all that
    let shot = page.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true}),
        Duration::from_secs(60),
    );
    let png_bytes = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let out = repo().join("target/web/screenshot.png");
    let _ = std::fs::write(&out, &png_bytes);
    let (spread, colours) = picture_spread(&png_bytes);
    failures.check(spread > 20.0 && colours > 16, || {
        format!("the screenshot looks blank: luminance spread {spread:.1}, {colours} colours")
    });
    failures.check(page.exceptions.is_empty(), || {
        format!("script errors on the page: {:?}", page.exceptions)
    });
    let ended = page.evaluate("window.trm.ended", Duration::from_secs(10));
    for work in ended.as_array().into_iter().flatten() {
        eprintln!(
            "browser test: {} took {:.1} s",
            work["label"].as_str().unwrap_or("?"),
            work["seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let ran = run_started.elapsed();
    drop(page);
    drop(browser);

    // Chromium without its WebGPU switches (Linux: no adapter): one plain
    // sentence saying what to try, and nothing that needs the GPU enabled
    let browser = launch(&binary, &url, false);
    let mut page = Page::attach(browser.port, &url);
    page.call("Runtime.enable", json!({}), Duration::from_secs(30));
    let ready = page.ready();
    let plain_view = page.evaluate(
        "(() => { const $ = (id) => document.getElementById(id); return {
            status: $('status').textContent, model: $('model-info').textContent,
            disabled: ['solve', 'bench', 'pipelines', 'bundled', 'file'].every((id) => $(id).disabled) }; })()",
        Duration::from_secs(10),
    );
    if ready == "ok" {
        eprintln!(
            "note: Chromium without WebGPU switches has an adapter here; the no-adapter check did not run"
        );
    } else {
        let status = plain_view["status"].as_str().unwrap_or("");
        failures.check(
            status.contains("no WebGPU adapter")
                && status.contains("--enable-unsafe-webgpu")
                && !status.contains("not compiled in")
                && !plain_view["model"]
                    .as_str()
                    .unwrap_or("loading")
                    .contains("loading")
                && plain_view["disabled"] == true
                && page.exceptions.is_empty(),
            || {
                format!(
                    "without a WebGPU adapter: {plain_view}, exceptions {:?}",
                    page.exceptions
                )
            },
        );
    }
    drop(page);
    drop(browser);
    let _ = std::fs::remove_dir_all(files[0].parent().unwrap());

    eprintln!(
        "browser test: build {:.1} s, page {:.1} s, screenshot {} ({spread:.1} spread, {colours} colours)",
        built.as_secs_f64(),
        ran.as_secs_f64(),
        out.display()
    );
    assert!(
        failures.0.is_empty(),
        "{} browser check(s) failed:\n{}",
        failures.0.len(),
        failures.0.join("\n")
    );
}
