//! The sandbox itself: agents connect with their metadata identity, a killed agent shows as disconnected and comes
//! back with the same id, and the coordinator keeps its state across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::time::Duration;

use ferry_proto::v1::{Agent, ListAgentsRequest};
use ferry_testkit::{AgentSetup, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(20);

async fn agents(sandbox: &Sandbox) -> Vec<Agent> {
    let mut client = sandbox.client().await.unwrap();
    let mut agents = client
        .list_agents(ListAgentsRequest {
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agents;
    agents.sort_by(|a, b| a.cvm_instance_id.cmp(&b.cvm_instance_id));
    agents
}

#[tokio::test]
async fn agents_connect_disconnect_and_come_back_with_the_same_id() {
    let mut sandbox = Sandbox::builder()
        .agents(1)
        .agent(AgentSetup::cvm("ins-other123", "ap-shanghai", "127.0.0.3"))
        .build()
        .await
        .unwrap();
    sandbox.wait_for_agents(2, TIMEOUT).await.unwrap();
    let listed = agents(&sandbox).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].cvm_instance_id, "ins-other123");
    assert_eq!(listed[0].region, "ap-shanghai");
    assert!(
        listed[0].private_ips.contains(&"127.0.0.3".to_owned()),
        "{:?}",
        listed[0].private_ips
    );
    assert_eq!(listed[1].cvm_instance_id, "ins-sbx00000");
    let id = sandbox.agent_id(0).unwrap();
    assert_eq!(listed[1].agent_id, id);

    sandbox.kill_agent(0).await.unwrap();
    ferry_testkit::wait_for(TIMEOUT, || async {
        let listed = agents(&sandbox).await;
        Ok(listed
            .iter()
            .any(|a| a.agent_id == id && !a.connected)
            .then_some(()))
    })
    .await
    .unwrap();

    sandbox.restart_agent(0).await.unwrap();
    sandbox.wait_for_agents(2, TIMEOUT).await.unwrap();
    assert_eq!(sandbox.agent_id(0).unwrap(), id);

    // The coordinator restarts on the same port and data dir; the agents find it again.
    sandbox.restart_coordinator().await.unwrap();
    sandbox.wait_for_agents(2, TIMEOUT).await.unwrap();
    let listed = agents(&sandbox).await;
    assert!(listed.iter().any(|a| a.agent_id == id && a.connected));
    sandbox.shutdown().await.unwrap();
}
