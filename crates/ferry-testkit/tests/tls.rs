//! Agents reach a TLS coordinator when they trust its CA (`tls_ca`), and the operator client does too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::time::Duration;

use ferry_testkit::{Sandbox, SandboxTls};

#[tokio::test]
async fn agents_connect_over_tls_with_the_configured_ca() {
    let sandbox = Sandbox::builder()
        .agents(2)
        .tls(SandboxTls::generate().unwrap())
        .build()
        .await
        .unwrap();
    assert!(sandbox.url().starts_with("https://"));
    sandbox
        .wait_for_agents(2, Duration::from_secs(20))
        .await
        .unwrap();
    sandbox.shutdown().await.unwrap();
}
