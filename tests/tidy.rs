//! The architecture's boundaries (ARCHITECTURE.md, "Architecture invariant") that the
//! crate graph alone does not enforce, checked over the source text: which folder may name
//! which crate or module, and how long a file may grow without saying why.

use std::path::{Path, PathBuf};
use wavelet_tests::root;

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no sources under {}", dir.display());
    out
}

/// Lines of code (not comments) that mention `needle`.
fn mentions(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| !l.trim_start().starts_with("//") && l.contains(needle)).count()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

#[test]
fn chat_connections_reach_the_runtime_only_through_their_context() {
    let chat = root().join("bot/wavelet/src/chat");
    let offenders: Vec<String> = sources(&chat)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("context.rs"))
        .filter(|(_, t)| mentions(t, "runtime::") > 0 || mentions(t, "Runtime") > 0)
        .map(|(p, _)| relative(&p))
        .collect();
    assert!(offenders.is_empty(), "these chat files name the runtime (use ChatContext): {offenders:?}");
}

#[test]
fn only_the_chat_folder_names_the_platforms_crates() {
    let src = root().join("bot/wavelet/src");
    let chat = src.join("chat");
    let offenders: Vec<String> = sources(&src)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(&chat))
        .filter(|(_, t)| ["matrix_sdk::", "ruma::", "serenity::"].iter().any(|c| mentions(t, c) > 0))
        .map(|(p, _)| relative(&p))
        .collect();
    assert!(offenders.is_empty(), "outside chat/, these name matrix-sdk, ruma or serenity: {offenders:?}");
}

#[test]
fn only_the_store_names_sqlx() {
    let offenders: Vec<String> = ["bot/core/src", "bot/wavelet/src"]
        .iter()
        .flat_map(|d| sources(&root().join(d)))
        .filter(|(_, t)| mentions(t, "sqlx") > 0)
        .map(|(p, _)| relative(&p))
        .collect();
    assert!(offenders.is_empty(), "outside bot/store, these name sqlx: {offenders:?}");
}

#[test]
fn the_core_knows_no_runtime_store_or_clock() {
    let offenders: Vec<String> = sources(&root().join("bot/core/src"))
        .into_iter()
        .filter(|(_, t)| ["tokio", "SystemTime::now", "Instant::now"].iter().any(|c| mentions(t, c) > 0))
        .map(|(p, _)| relative(&p))
        .collect();
    assert!(offenders.is_empty(), "the core names tokio or reads the time itself: {offenders:?}");
}

/// A file longer than this says why in its opening doc comment ("over 800 lines: …").
const LONG: usize = 800;

#[test]
fn a_long_file_says_why_it_is_one() {
    let offenders: Vec<String> = ["bot", "tests"]
        .iter()
        .flat_map(|d| sources(&root().join(d)))
        .filter(|(p, _)| !p.components().any(|c| c.as_os_str() == "target"))
        .filter(|(_, t)| t.lines().count() > LONG)
        .filter(|(_, t)| {
            let head: String =
                t.lines().take_while(|l| l.starts_with("//!")).collect::<Vec<_>>().join(" ").to_lowercase();
            !head.contains("over 800 lines")
        })
        .map(|(p, t)| format!("{} ({} lines)", relative(&p), t.lines().count()))
        .collect();
    assert!(offenders.is_empty(), "files over {LONG} lines that do not say why at their top: {offenders:?}");
}
