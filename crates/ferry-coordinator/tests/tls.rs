//! TLS with rustls on the one listener: a client trusting the server's CA gets through (with its token); a
//! plaintext client does not; with a client CA configured, a client without a certificate is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use ferry_coordinator::TlsPem;
use ferry_proto::v1 as pb;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf("localhost"),
        client: leaf("operator"),
    }
}

async fn tls_channel(
    coord: &Coord,
    pki: &Pki,
    with_client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Channel::from_shared(format!("https://{}", coord.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn tls_serves_both_services_and_refuses_plaintext() {
    let pki = pki();
    let coord = Coord::start_with(|c| {
        c.tls = Some(TlsPem {
            cert: pki.server.0.clone().into(),
            key: pki.server.1.clone().into(),
            client_ca: None,
        })
    })
    .await;
    let ch = tls_channel(&coord, &pki, false).await.unwrap();
    let mut op = operator_client(ch.clone(), Some(OPERATOR_TOKEN));
    register_default_instance(&mut op).await;
    let tasks = op
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(tasks.tasks.is_empty());
    let agent = FakeAgent::connect_to(ch.clone(), "agent-0000000000f1", "", true).await;
    let mut op_no_token = operator_client(ch, None);
    assert_eq!(
        op_no_token
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    // A plaintext client cannot talk to a TLS listener.
    let plain = Channel::from_shared(format!("http://{}", coord.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut op = operator_client(plain, Some(OPERATOR_TOKEN));
        assert!(op
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .is_err());
    }
    drop(agent);
    coord.shutdown().await;
}

#[tokio::test]
async fn client_ca_requires_a_client_certificate() {
    let pki = pki();
    let coord = Coord::start_with(|c| {
        c.tls = Some(TlsPem {
            cert: pki.server.0.clone().into(),
            key: pki.server.1.clone().into(),
            client_ca: Some(pki.ca_pem.clone().into()),
        })
    })
    .await;
    let ch = tls_channel(&coord, &pki, true).await.unwrap();
    let mut op = operator_client(ch, Some(OPERATOR_TOKEN));
    op.list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap();
    let refused = match tls_channel(&coord, &pki, false).await {
        Err(_) => true,
        Ok(ch) => operator_client(ch, Some(OPERATOR_TOKEN))
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");
    coord.shutdown().await;
}
