//! The `wavelet` binary as a person uses it: the README's piped console run, `check`,
//! `test` and `audit verify`, with their exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of the example configuration whose store is a file in `dir`.
fn config_in(dir: &Path, workflows: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/wavelet.toml")).unwrap();
    let text = text
        .replace("url = \"sqlite://wavelet.db\"", &format!("url = \"sqlite://{}\"", dir.join("w.db").display()))
        .replace("dir = \"../workflows\"", &format!("dir = \"{}\"", workflows.display()));
    let path = dir.join("wavelet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn wavelet(config: &Path, args: &[&str], stdin: Option<&Path>) -> (i32, String) {
    let mut cmd = Command::new(wavelet_tests::wavelet_bin());
    cmd.arg("--config").arg(config).args(args).env_remove("WAVELET_DATABASE_URL").env("WAVELET_LOG", "warn");
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
        None => Stdio::null(),
    });
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_piped_example_raises_a_concern_and_leaves_a_ledger_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &root().join("workflows"));
    let (code, out) = wavelet(&config, &["console"], Some(&root().join("examples/concern.txt")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[to alice] wavelet: Child's initials"), "{out}");
    assert!(out.contains("[in north] wavelet: New neglect concern C-1, risk: possibly."), "{out}");
    assert!(out.contains("[to alice] wavelet: Thank you. C-1 is with the group."), "{out}");
    let to_group: Vec<&str> = out.lines().filter(|l| l.contains("[in north]")).collect();
    assert_eq!(to_group.len(), 1, "{out}");
    assert!(!to_group[0].contains("coat"), "the details stay on the case: {}", to_group[0]);
    let (code, out) = wavelet(&config, &["audit", "verify"], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ledger verified"), "{out}");
    // What a witness would have posted: the head, as ENTRY:HASH.
    let (hash, entry) = out.split_once(", head ").unwrap().1.split_once(" (entry ").unwrap();
    let head = format!("{}:{hash}", entry.split_once(')').unwrap().0);
    let (code, out) = wavelet(&config, &["audit", "verify", "--witness", &head], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("matches its witness"), "{out}");
    let other = format!("{}:{}", head.split_once(':').unwrap().0, "ab".repeat(32));
    let (code, out) = wavelet(&config, &["audit", "verify", "--witness", &head, "--witness", &other], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("LEDGER DOES NOT VERIFY") && out.contains("differs from its witness"), "{out}");
    let (code, out) = wavelet(&config, &["audit", "verify", "--witness", "yesterday's"], None);
    assert_eq!(code, 2, "a witness that is not ENTRY:HASH is a usage error: {out}");
    assert!(out.contains("write ENTRY:HASH"), "{out}");
    let (code, out) = wavelet(&config, &["audit", "show", "--case", "C-1", "--as", "rey"], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("share") && out.contains("protect a child from harm"), "{out}");
    let (code, out) = wavelet(&config, &["audit", "show", "--case", "C-1", "--as", "alice"], None);
    assert_ne!(code, 0, "a practitioner may not read the ledger: {out}");
}

#[test]
fn check_names_the_broken_workflow_and_still_loads_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir(&wf).unwrap();
    std::fs::copy(root().join("workflows/raise_concern.rhai"), wf.join("raise_concern.rhai")).unwrap();
    std::fs::write(wf.join("broken.rhai"), "const ALLOWED_ROLES = [\"lead\"];\nfn run(ctx) {\n    let x = ;\n}\n")
        .unwrap();
    let config = config_in(dir.path(), &wf);
    let (code, out) = wavelet(&config, &["check"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok  ") && out.contains("raise_concern.rhai"), "{out}");
    assert!(out.contains("broken.rhai:3:"), "file:line:col of the mistake: {out}");
}

#[test]
fn check_reports_every_configuration_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[person]]\nid = \"x\"\nname = \"X\"\nagency = \"nowhere\"\nroles = [\"wizard\"]\ncolour = \"red\"\n",
    )
    .unwrap();
    let (code, out) = wavelet(&path, &["check"], None);
    assert_eq!(code, 1, "{out}");
    for needle in ["bad.toml:4:", "nowhere", "bad.toml:5:", "wizard", "bad.toml:6:", "colour"] {
        assert!(out.contains(needle), "{needle} missing from: {out}");
    }
}

#[test]
fn test_command_passes_the_shipped_transcripts_and_fails_a_wrong_one() {
    let (code, out) = wavelet(&root().join("examples/wavelet.toml"), &["test"], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS") && out.contains(" passed, 0 failed"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("wrong.transcript");
    std::fs::write(
        &t,
        format!(
            "config: {}\nalice in north: !concern\nbot to alice: Hello?\n",
            root().join("examples/wavelet.toml").display()
        ),
    )
    .unwrap();
    let (code, out) = wavelet(&root().join("examples/wavelet.toml"), &["test", t.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("0 passed, 1 failed") && out.contains("line 3"), "{out}");
}
