//! Every error message a user can see has an entry in docs/troubleshooting.md: the message
//! texts are taken from the source (thiserror attributes, usage errors, anyhow contexts and
//! session failures) and their longest literal part must appear in the page.

use std::fs;
use std::path::Path;

/// Calls whose first string literal is (part of) a user-facing message.
const MESSAGE_CALLS: [&str; 10] = [
    "#[error(",
    "Failure::usage(",
    "UsageError(",
    "bail!(",
    "anyhow!(",
    "BadHandOff(",
    "context(",
    "with_context(",
    "Handshake(",
    "self.fail(",
];

/// Messages that only a bug can produce; they are not troubleshooting material.
const INTERNAL: [&str; 2] = ["forward task failed", "session task panicked"];

/// Files whose messages reach users (the simulator and the codec report to the developer).
fn user_facing(path: &Path) -> bool {
    let p = path.to_string_lossy();
    !p.contains("/sim/") && (!p.contains("/proto/") || p.ends_with("session.rs"))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && user_facing(&path) {
            out.push(path);
        }
    }
}

/// The string literal starting within a few characters after `from`, unescaped, with Rust's
/// `\` line continuations folded.
fn literal_after(src: &str, from: usize) -> Option<String> {
    let rest = &src[from..];
    let open = rest.find('"').filter(|&i| i < 60)?;
    let mut out = String::new();
    let mut chars = rest[open + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                '\n' => while chars.next_if(|c| c.is_whitespace()).is_some() {},
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// The longest part of a format string between placeholders, without edge punctuation.
fn longest_fixed_part(message: &str) -> String {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut depth = 0;
    for c in message.chars() {
        match c {
            '{' => {
                depth += 1;
                parts.push(std::mem::take(&mut current));
            }
            '}' => depth -= 1,
            c if depth == 0 => current.push(c),
            _ => {}
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim_matches([' ', ':', '.', '(', ')']).to_owned())
        .max_by_key(String::len)
        .unwrap_or_default()
}

/// Markdown and message text compared without backticks, escapes and line breaks.
fn normalize(text: &str) -> String {
    text.replace(['`', '\\'], "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_error_message_has_a_troubleshooting_entry() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = normalize(&fs::read_to_string(root.join("docs/troubleshooting.md")).expect("doc"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut checked = 0;
    let mut missing = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("source");
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for call in MESSAGE_CALLS {
            for (at, _) in text.match_indices(call) {
                let Some(message) = literal_after(text, at + call.len()) else {
                    continue;
                };
                let part = longest_fixed_part(&message);
                if part.len() < 12 || INTERNAL.contains(&part.as_str()) {
                    continue;
                }
                checked += 1;
                if !doc.contains(&normalize(&part)) {
                    missing.push(format!("{}: {part}", file.display()));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} messages found: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "messages without a troubleshooting entry:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scan_sees_continued_literals_and_placeholders() {
    let src = "x #[error(\"could not {a} reach \\\n     the endpoint {b}: fix it\")]";
    let message = literal_after(src, src.find("#[error(").unwrap() + 8).expect("literal");
    assert_eq!(message, "could not {a} reach the endpoint {b}: fix it");
    assert_eq!(longest_fixed_part(&message), "reach the endpoint");
}

/// The README and the docs refer only to files a clone has: every relative link, and every
/// backticked path under a directory of the repository, exists; nothing points at notes kept
/// outside it.
#[test]
fn docs_refer_only_to_files_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for dir in ["docs", "contrib"] {
        for entry in fs::read_dir(root.join(dir)).expect("read docs").flatten() {
            if entry.path().extension().is_some_and(|e| e == "md") {
                pages.push(entry.path());
            }
        }
    }
    let dirs = [
        "src/", "docs/", "contrib/", "tests/", "benches/", "scripts/", ".ci/",
    ];
    let mut missing = Vec::new();
    for page in &pages {
        let text = fs::read_to_string(page).expect("page");
        let base = page.parent().expect("dir");
        let links = text.split("](").skip(1).filter_map(|s| s.split(')').next());
        for link in links {
            let file = link.split('#').next().unwrap_or_default();
            if file.is_empty() || file.contains("://") || file.starts_with("mailto:") {
                continue;
            }
            if !base.join(file).exists() {
                missing.push(format!("{}: link {link}", page.display()));
            }
        }
        for quoted in text.split('`').skip(1).step_by(2) {
            let path = quoted.trim_end_matches(['.', ',', ':']);
            if dirs.iter().any(|d| path.starts_with(d))
                && !path.contains([' ', '*', '<', '{', '$'])
                && !root.join(path).exists()
            {
                missing.push(format!("{}: `{path}`", page.display()));
            }
        }
        for outside in [
            "protocol.md",
            "field.md",
            "style.md",
            "protocol notes",
            "/work/",
        ] {
            if text.contains(outside) {
                missing.push(format!("{}: mentions {outside}", page.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "references to files not in the repository:\n{}",
        missing.join("\n")
    );
}
