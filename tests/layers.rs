//! The dependency rules of docs/architecture.md, checked on the source: a file may name (as
//! `crate::…`, in `use` lines or in paths) only the modules its layer may depend on, and the
//! sans-IO core names no tokio, no SDK, no socket, no file and no clock. Test modules (from
//! `#[cfg(test)]` on, or a `tests.rs` file) and comments are not checked.

use std::fs;
use std::path::{Path, PathBuf};

/// What each layer (a directory under src/, or a top-level file) may name from the crate.
/// An entry names a module (`proto`) or one of its modules (`proto::frame`).
const RULES: [(&str, &[&str]); 7] = [
    // The protocol core depends on nothing else in the crate.
    ("proto", &[]),
    // The control plane depends on nothing else in the crate; `net` holds the network
    // settings it shares with the websocket.
    ("aws", &["net"]),
    ("transport", &["proto", "aws", "os", "net"]),
    // The simulator shares the wire format with the client, not its state machines: a
    // misreading of the protocol must not be agreed on by both sides.
    (
        "sim",
        &[
            "proto::frame",
            "proto::payload",
            "proto::smux",
            "proto::crypto",
            "proto::documents",
            "os",
        ],
    ),
    // `front` wires the layers together.
    ("front", &["*"]),
    // Leaf modules beside the layers.
    ("os", &[]),
    ("net", &[]),
];

/// Files that may name more than their layer, and why.
const EXCEPTIONS: [(&str, &str, &str); 4] = [
    // The in-memory harness joins the client's Session to the agent model: it needs both.
    ("src/sim/pair.rs", "proto", "the Session ⇄ agent harness"),
    // Issue 14 item 4: the simulated agent gets its own retransmission timer and RNG.
    (
        "src/sim/agent.rs",
        "proto::rto",
        "issue 14: the agent's own timer",
    ),
    (
        "src/sim/agent.rs",
        "proto::session",
        "issue 14: the agent's own RNG",
    ),
    (
        "src/sim/faults.rs",
        "proto::session",
        "issue 14: the simulator's own RNG",
    ),
];

/// Words the sans-IO core must not contain: it gets time, bytes and randomness from its caller.
const NOT_IN_PROTO: [&str; 9] = [
    "tokio",
    "aws_sdk",
    "aws_config",
    "hyper",
    "std::net",
    "std::fs",
    "std::env",
    "Instant::now",
    "SystemTime::now",
];

/// The files of `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file: no test module, no comment lines, no trailing comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every crate path named in `code`, as `module` or `module::item`: `crate::proto::frame::X`
/// gives `proto::frame`, `crate::proto::{Event, frame::Y}` gives `proto::Event` and
/// `proto::frame`.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let module = ident(rest);
        let after = &rest[module.len()..];
        match after.strip_prefix("::") {
            Some(group) if group.starts_with('{') => {
                let inner = group[1..].split('}').next().unwrap_or_default();
                for item in inner.split(',') {
                    let item = ident(item.trim());
                    if !item.is_empty() {
                        out.push(format!("{module}::{item}"));
                    }
                }
            }
            Some(next) => out.push(format!("{module}::{}", ident(next))),
            None => out.push(module),
        }
    }
    out
}

/// Whether `allowed` (a rule entry) covers `path`.
fn covers(allowed: &str, path: &str) -> bool {
    allowed == "*" || path == allowed || path.starts_with(&format!("{allowed}::"))
}

/// The layer of a file under src/: its directory, or its stem for a top-level file.
fn layer(rel: &str) -> &str {
    let rel = rel.strip_prefix("src/").unwrap_or(rel);
    match rel.split_once('/') {
        Some((dir, _)) => dir,
        None => rel.strip_suffix(".rs").unwrap_or(rel),
    }
}

/// The rule breaches in one file (`rel` is its path from the repository root).
fn violations(rel: &str, text: &str) -> Vec<String> {
    if rel.ends_with("/tests.rs") {
        // A test module in its own file (`#[cfg(test)] mod tests;`).
        return Vec::new();
    }
    let code = code(text);
    let layer = layer(rel);
    let mut found = Vec::new();
    if let Some((_, allowed)) = RULES.iter().find(|(l, _)| *l == layer) {
        for path in crate_paths(&code) {
            let module = path.split("::").next().unwrap_or_default();
            let own = module == layer;
            let excepted = EXCEPTIONS
                .iter()
                .any(|(f, a, _)| *f == rel && covers(a, &path));
            if !own && !excepted && !allowed.iter().any(|a| covers(a, &path)) {
                found.push(format!("{rel}: {layer} names crate::{path}"));
            }
        }
    }
    // The command line is the front-ends' input: only they (and main, logging) read it.
    let cli_ok = layer == "front" || rel == "src/main.rs" || rel == "src/logging.rs";
    if !cli_ok && crate_paths(&code).iter().any(|p| covers("cli", p)) {
        found.push(format!(
            "{rel}: only front reads the command line (crate::cli)"
        ));
    }
    if layer == "proto" {
        for word in NOT_IN_PROTO {
            if code.contains(word) {
                found.push(format!("{rel}: the sans-IO core names {word}"));
            }
        }
    }
    found
}

#[test]
fn layers_name_only_what_they_may_depend_on() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(root).expect("under the root");
        let rel = rel.to_string_lossy().replace('\\', "/");
        found.extend(violations(&rel, &fs::read_to_string(file).expect("source")));
    }
    assert!(files.len() > 40, "only {} files found", files.len());
    assert!(
        found.is_empty(),
        "layer rules broken (docs/architecture.md, Dependency rules):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_forbidden_imports() {
    let bad = "use tokio::time::sleep;\nuse crate::transport::Driver;\n";
    assert_eq!(violations("src/proto/x.rs", bad).len(), 2);
    assert_eq!(
        violations("src/sim/x.rs", "use crate::proto::{Session, frame::Frame};").len(),
        1
    );
    assert!(violations("src/sim/x.rs", "use crate::proto::frame::{Frame, flag};").is_empty());
    assert_eq!(
        violations("src/aws/x.rs", "fn f(a: crate::cli::AwsArgs) {}").len(),
        2
    );
    assert!(violations("src/transport/x.rs", "// crate::front is not named\n").is_empty());
    assert!(violations("src/front/x.rs", "use crate::sim::Sim;").is_empty());
    assert!(violations("src/transport/x/tests.rs", "use crate::sim::agent::Agent;").is_empty());
}
