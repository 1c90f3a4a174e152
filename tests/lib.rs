//! What every suite here shares with the outside: where the repository is, and the
//! `wavelet` binary the suites run as a process. (The suites' own helpers are in
//! `common/` and `support/`.)

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository's top folder (examples, workflows, migrations).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `wavelet` binary, built with the platforms this suite was built with. A binary of
/// another package has no `CARGO_BIN_EXE_` here, so it is built (a no-op when it is up to
/// date) the first time a test asks, and found by what cargo reports; `WAVELET_BIN`, when
/// set, names one to use instead (`scripts/test` builds it once and sets it).
pub fn wavelet_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("WAVELET_BIN") {
            return PathBuf::from(bin);
        }
        let mut features = Vec::new();
        if cfg!(feature = "matrix") {
            features.push("wavelet/matrix");
        }
        if cfg!(feature = "discord") {
            features.push("wavelet/discord");
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .current_dir(root())
            // With the workspace's tests, so features are unified as for the suites' own
            // build (dev-dependencies included) and nothing is compiled a second time.
            .args(["build", "--workspace", "--tests", "--bin", "wavelet", "--message-format=json-render-diagnostics"])
            .args(if features.is_empty() { Vec::new() } else { vec!["--features".to_string(), features.join(",")] })
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("cargo runs to build the wavelet binary");
        assert!(out.status.success(), "building the wavelet binary failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "wavelet")
            // The binary itself, not the harness its unit tests are built into.
            .filter(|m| m["target"]["kind"][0] == "bin" && m["profile"]["test"] == false)
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the wavelet binary it built")
    })
    .clone()
}
