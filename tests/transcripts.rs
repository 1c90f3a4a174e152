//! Every shipped transcript passes, and a transcript that expects the wrong thing fails
//! with a diff that names the line.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_transcript_passes() {
    let files = wavelet::ops::transcripts::find(&root().join("workflows"));
    assert!(files.len() >= 3, "expected the shipped transcripts, found {files:?}");
    for f in files {
        if let Err(e) = wavelet::ops::transcripts::run(&f, None).await {
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
    let err = wavelet::ops::transcripts::run(&t, None).await.expect_err("must fail").to_string();
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
    let err = wavelet::ops::transcripts::run(&t, None).await.expect_err("must fail").to_string();
    assert!(err.contains("did more than the transcript expects"), "{err}");
}

/// `not shared with GROUP: reason` checks a recorded decision not to share, like a share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_not_to_share_is_expected_by_its_group_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(
        wf.join("noshare.rhai"),
        "const COMMAND = \"noshare\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {\n    let c = open_case(#{ subject: \"AB 2015\", category: \"other\", risk: \"no\" });\n    decline_share(ctx.group, c, #{ reason: \"no risk of harm\" });\n    tell(ctx.starter, `Recorded ${c.id}`);\n}\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(root().join("examples/wavelet.toml")).unwrap();
    let config = dir.path().join("wavelet.toml");
    std::fs::write(&config, text.replace("dir = \"../workflows\"", &format!("dir = \"{}\"", wf.display()))).unwrap();
    let play = |name: &str, expected: &str| {
        let t = dir.path().join(name);
        std::fs::write(
            &t,
            format!("config: {}\n\nalice in north: !noshare\n{expected}bot to alice: Recorded C-1\n", config.display()),
        )
        .unwrap();
        t
    };
    let right = play("right.transcript", "not shared with north: no risk ...\n");
    wavelet::ops::transcripts::run(&right, None).await.expect("the decision is expected");
    let wrong = play("wrong.transcript", "shared with north: ...\n");
    let err = wavelet::ops::transcripts::run(&wrong, None)
        .await
        .expect_err("a decision not to share is no share")
        .to_string();
    assert!(err.contains("actual    not shared with north: no risk of harm"), "{err}");
    let missing = play("missing.transcript", "");
    let err = wavelet::ops::transcripts::run(&missing, None).await.expect_err("must be expected").to_string();
    assert!(err.contains("did more than the transcript expects"), "{err}");
}
