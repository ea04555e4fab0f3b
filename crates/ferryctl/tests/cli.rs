//! ferryctl against an in-process coordinator (ferry-testkit sandbox): every output format stays free of
//! passwords, server errors print the gRPC code and exit 1, usage errors exit 2, an unreachable coordinator exits
//! 3, and failed checks after `task check --wait` exit 4.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ferry_testkit::{Sandbox, OPERATOR_TOKEN};

const SOURCE_PASSWORD: &str = "src-Pa55word-9f3a";
const DESTINATION_PASSWORD: &str = "dst-Pa55word-71bc";

struct Ctl<'a> {
    url: String,
    token_file: &'a Path,
}

impl Ctl<'_> {
    async fn run(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferryctl"));
        command
            .arg("--coordinator")
            .arg(&self.url)
            .arg("--plaintext")
            .arg("--token-file")
            .arg(self.token_file)
            .args(args)
            .env_remove("FERRY_COORDINATOR")
            .stdin(std::process::Stdio::null());
        tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("ferryctl hung")
            .expect("ferryctl did not start")
    }

    /// Runs and asserts success; returns stdout. Every run also checks no password leaked.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_no_password(&stdout);
        assert_no_password(&stderr);
        assert!(
            output.status.success(),
            "ferryctl {args:?} failed: {stderr}"
        );
        stdout
    }
}

fn assert_no_password(text: &str) {
    assert!(
        !text.contains(SOURCE_PASSWORD),
        "source password leaked: {text}"
    );
    assert!(
        !text.contains(DESTINATION_PASSWORD),
        "destination password leaked: {text}"
    );
}

#[tokio::test]
async fn ferryctl_round_trip_never_shows_passwords_and_exits_with_distinct_codes() {
    let sandbox = Sandbox::builder().build().await.unwrap();
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().to_path_buf();
    let token_file = dir.join("operator-token");
    std::fs::write(&token_file, format!("{OPERATOR_TOKEN}\n")).unwrap();
    let source_pw = dir.join("source-password");
    std::fs::write(&source_pw, format!("{SOURCE_PASSWORD}\n")).unwrap();
    let destination_pw = dir.join("destination-password");
    std::fs::write(&destination_pw, DESTINATION_PASSWORD).unwrap();
    let ctl = Ctl {
        url: sandbox.url(),
        token_file: &token_file,
    };

    let out = ctl
        .ok(&[
            "instance",
            "register",
            "--id",
            "cmgo-6wk2mxa1",
            "--region",
            "ap-guangzhou",
            "--uri",
            "mongodb://127.0.0.1:27017/",
            "--username",
            "root",
            "--password-file",
            destination_pw.to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("cmgo-6wk2mxa1"), "{out}");

    let out = ctl
        .ok(&[
            "-o",
            "json",
            "task",
            "create",
            "--name",
            "orders",
            "--region",
            "ap-guangzhou",
            "--kind",
            "cvm",
            "--cvm-id",
            "ins-abcd1234",
            "--host",
            "127.0.0.5",
            "--port",
            "27017",
            "--username",
            "app",
            "--password-file",
            source_pw.to_str().unwrap(),
            "--destination",
            "cmgo-6wk2mxa1",
            "--database",
            "shop,crm",
        ])
        .await;
    let task: serde_json::Value = serde_json::from_str(&out).unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["state"], "NOT_STARTED");
    assert_eq!(task["password_set"], true);
    assert_eq!(
        task["spec"]["databases"],
        serde_json::json!(["shop", "crm"])
    );

    for output in ["table", "json"] {
        let out = ctl.ok(&["-o", output, "task", "get", &task_id]).await;
        assert!(out.contains("orders"), "{out}");
        let out = ctl.ok(&["-o", output, "task", "list"]).await;
        assert!(out.contains(&task_id), "{out}");
        let out = ctl
            .ok(&[
                "-o",
                output,
                "task",
                "list",
                "--state",
                "not-started",
                "--region",
                "ap-guangzhou",
            ])
            .await;
        assert!(out.contains(&task_id), "{out}");
        let out = ctl.ok(&["-o", output, "instance", "list"]).await;
        assert!(out.contains("cmgo-6wk2mxa1"), "{out}");
        ctl.ok(&["-o", output, "agent", "list"]).await;
    }

    // Update keeps the stored password when none is given.
    let out = ctl
        .ok(&[
            "-o", "json", "task", "update", &task_id, "--name", "orders-2",
        ])
        .await;
    let task: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(task["spec"]["name"], "orders-2");
    assert_eq!(task["password_set"], true);

    // Illegal transition: the gRPC code and message, exit 1.
    let output = ctl.run(&["task", "start", &task_id]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FailedPrecondition"), "{stderr}");

    // A bad field: InvalidArgument naming it.
    let output = ctl
        .run(&[
            "task",
            "create",
            "--name",
            "x",
            "--region",
            "ap-guangzhou",
            "--kind",
            "cvm",
            "--cvm-id",
            "ins-abcd1234",
            "--host",
            "127.0.0.5",
            "--port",
            "0",
            "--username",
            "app",
            "--password-file",
            source_pw.to_str().unwrap(),
            "--destination",
            "cmgo-6wk2mxa1",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("port"),
        "{stderr}"
    );

    // No agent on ins-abcd1234: the checks fail on agent_available; --wait prints the items and exits 4.
    let output = ctl.run(&["task", "check", &task_id, "--wait"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(4),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("agent_available") && stdout.contains("FAIL"),
        "{stdout}"
    );
    assert_no_password(&stdout);

    // Wrong token: Unauthenticated, exit 1.
    let wrong = dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let bad = Ctl {
        url: sandbox.url(),
        token_file: &wrong,
    };
    let output = bad.run(&["task", "list"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Unauthenticated"));

    // Usage error (plaintext URL without --plaintext): exit 2.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferryctl"))
        .args(["--coordinator", &sandbox.url(), "task", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Deleting works and says so.
    let out = ctl.ok(&["task", "delete", &task_id]).await;
    assert!(out.contains(&task_id));
    sandbox.shutdown().await.unwrap();

    // Unreachable coordinator: exit 3.
    let output = ctl.run(&["task", "list"]).await;
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn ferryctl_speaks_tls_with_the_given_ca_and_refuses_an_unknown_one() {
    let sandbox = Sandbox::builder()
        .tls(ferry_testkit::SandboxTls::generate().unwrap())
        .build()
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("operator-token");
    std::fs::write(&token_file, OPERATOR_TOKEN).unwrap();
    let ca = sandbox.ca_file().unwrap().to_str().unwrap().to_owned();
    let run = |extra: Vec<String>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferryctl"));
        command
            .args([
                "--coordinator",
                &sandbox.url(),
                "--token-file",
                token_file.to_str().unwrap(),
            ])
            .args(extra)
            .args(["agent", "list"]);
        async move { command.output().await.unwrap() }
    };
    let output = run(vec!["--tls-ca".into(), ca]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ID"));

    // No CA given: the server certificate is not trusted; that is a connection failure (exit 3).
    let output = run(Vec::new()).await;
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    sandbox.shutdown().await.unwrap();
}
