#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! `ferry-agent replay` as an operator runs it: a file of oplog entries (as the server logs them, in
//! canonical extended JSON) applied to a destination, one line per entry, exit codes that say what
//! happened, and no credentials in the URI.

use std::process::Command;

use mongodb::bson::{doc, Document};

const PASSWORD: &str = "secret";

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
}

async fn destination() -> (mongosim::MongoSim, mongodb::Client) {
    let sim = mongosim::MongoSim::builder()
        .user("root", PASSWORD)
        .start()
        .await
        .unwrap();
    let client = mongodb::Client::with_uri_str(sim.uri_with_credentials("root", PASSWORD))
        .await
        .unwrap();
    (sim, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_applies_each_entry_and_stops_at_the_first_failure() {
    let (sim, client) = destination().await;
    client
        .database("app")
        .collection::<Document>("users")
        .insert_one(doc! {"_id": 1, "n": 0})
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, PASSWORD).unwrap();
    // Shapes as a 7.0 primary logs them (reference/mongodb.md §6-§7).
    let lines = [
        r#"{"op":"i","ns":"app.users","o":{"_id":{"$numberInt":"2"},"n":{"$numberInt":"5"}},"ts":{"$timestamp":{"t":1700000000,"i":1}}}"#,
        r#"{"op":"u","ns":"app.users","o":{"$v":{"$numberInt":"2"},"diff":{"u":{"n":{"$numberInt":"1"}}}},"o2":{"_id":{"$numberInt":"1"}},"ts":{"$timestamp":{"t":1700000000,"i":2}}}"#,
        r#"{"op":"i","ns":"app.system.views","o":{"_id":"app.v","viewOn":"users","pipeline":[]},"o2":{"_id":"app.v"},"ts":{"$timestamp":{"t":1700000000,"i":3}}}"#,
        r#"{"op":"x","ns":"app.users","o":{},"ts":{"$timestamp":{"t":1700000000,"i":4}}}"#,
        r#"{"op":"d","ns":"app.users","o":{"_id":{"$numberInt":"2"}},"ts":{"$timestamp":{"t":1700000000,"i":5}}}"#,
    ];
    let file = dir.path().join("entries.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = agent()
        .args([
            "replay",
            "--destination-uri",
            &sim.uri(),
            "--username",
            "root",
        ])
        .arg("--password-file")
        .arg(&password_file)
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.matches("applied  ").count(), 3, "{stdout}");
    assert!(
        stdout.contains("FAILED") && stdout.contains("unknown op 'x'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 of 5 entries applied; 1 not tried"),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD));
    let users = client.database("app").collection::<Document>("users");
    assert_eq!(
        users.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "n": 1})
    );
    assert!(
        users.find_one(doc! {"_id": 2}).await.unwrap().is_some(),
        "the delete after the failure was not tried"
    );
    let names = client
        .database("app")
        .list_collection_names()
        .await
        .unwrap();
    assert!(names.contains(&"v".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_credentials_in_the_uri() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.jsonl");
    std::fs::write(&file, "").unwrap();
    let out = agent()
        .args([
            "replay",
            "--destination-uri",
            "mongodb://root:secret@127.0.0.1:1/",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--password-file"), "{stderr}");
}
