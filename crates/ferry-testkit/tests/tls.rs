//! Agents reach a TLS coordinator when they trust its CA (`tls_ca`), and the operator client does too; an agent's
//! client certificate is renewed over its session before it expires, and the renewed one is what it reconnects
//! with.

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

#[tokio::test]
async fn an_agent_renews_its_certificate_before_it_expires_and_reconnects_with_the_new_one() {
    let ttl = Duration::from_secs(6);
    let mut sandbox = Sandbox::builder()
        .agents(1)
        .tls(SandboxTls::generate().unwrap())
        .agent_cert_ttl(ttl)
        .build()
        .await
        .unwrap();
    sandbox
        .wait_for_agents(1, Duration::from_secs(20))
        .await
        .unwrap();
    let data_dir = sandbox.agent_data_dir(0).unwrap();
    let first = ferry_agent::enrollment::Enrollment::load(&data_dir)
        .unwrap()
        .unwrap();
    // Renewal is due at two thirds of the lifetime (4 s): wait for a new certificate on disk.
    let renewed = ferry_testkit::wait_for(Duration::from_secs(20), || async {
        let now = ferry_agent::enrollment::Enrollment::load(&data_dir)?.unwrap();
        Ok((now.certificate_pem != first.certificate_pem).then_some(now))
    })
    .await
    .unwrap();
    assert_ne!(renewed.key_pem, first.key_pem, "a renewal uses a new key");
    assert!(renewed.not_after_ms > first.not_after_ms);
    // Once the first certificate has expired, a restarted agent gets in with the renewed one.
    ferry_testkit::wait_for(Duration::from_secs(20), || async {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        Ok((now_ms > first.not_after_ms + 500).then_some(()))
    })
    .await
    .unwrap();
    sandbox.kill_agent(0).await.unwrap();
    let client = sandbox.client().await.unwrap();
    ferry_testkit::wait_for(Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let agents = client
                .list_agents(ferry_proto::v1::ListAgentsRequest::default())
                .await?
                .into_inner()
                .agents;
            Ok(agents.iter().all(|a| !a.connected).then_some(()))
        }
    })
    .await
    .unwrap();
    sandbox.restart_agent(0).await.unwrap();
    sandbox
        .wait_for_agents(1, Duration::from_secs(20))
        .await
        .unwrap();
    sandbox.shutdown().await.unwrap();
}
