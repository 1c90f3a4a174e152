//! Every shipped transcript passes, and a transcript that expects the wrong thing fails
//! with a diff that names the line.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_transcript_passes() {
    let files = wavelet::transcripts::find(&root().join("workflows"));
    assert!(files.len() >= 3, "expected the shipped transcripts, found {files:?}");
    for f in files {
        if let Err(e) = wavelet::transcripts::run(&f, None).await {
            panic!("{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expectation_fails_with_the_line_and_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let config = root().join("examples/wavelet.toml");
    let t = dir.path().join("wrong.transcript");
    std::fs::write(
        &t,
        format!(
            "config: {}\n\nalice in north: !concern\nbot to alice: What is your favourite colour?\n",
            config.display()
        ),
    )
    .unwrap();
    let err = wavelet::transcripts::run(&t, None).await.expect_err("must fail").to_string();
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("expected  bot to alice: What is your favourite colour?"), "{err}");
    assert!(err.contains("actual    bot to alice: Child's initials"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nobody_expected_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = root().join("examples/wavelet.toml");
    let t = dir.path().join("silent.transcript");
    std::fs::write(&t, format!("config: {}\n\nalice in north: !concern\n", config.display())).unwrap();
    let err = wavelet::transcripts::run(&t, None).await.expect_err("must fail").to_string();
    assert!(err.contains("did more than the transcript expects"), "{err}");
}
