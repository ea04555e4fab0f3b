//! TLS with rustls on the one listener: a client trusting the server's CA gets through (with its token); a
//! plaintext client does not. Agents enroll over TLS and then authenticate with the client certificate the
//! coordinator's CA issued (mutual TLS); operators may authenticate with a client certificate from their own CA
//! whose subject the principals file names; an agent's certificate is never an operator.
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
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
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
    client_cert: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = client_cert {
        tls = tls.identity(Identity::from_pem(cert, key));
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
    let ch = tls_channel(&coord, &pki, None).await.unwrap();
    let mut op = operator_client(ch.clone(), Some(OPERATOR_TOKEN));
    register_default_instance(&mut op).await;
    let tasks = op
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(tasks.tasks.is_empty());
    // Enrollment over TLS issues a certificate and no bearer secret; the session authenticates with the
    // certificate (mutual TLS) and nothing else.
    let cred = enroll_on(ch.clone(), "", true).await;
    assert!(cred.secret.is_empty(), "a TLS coordinator issues no secret");
    let mtls = tls_channel(&coord, &pki, Some((&cred.certificate_pem, &cred.key_pem)))
        .await
        .unwrap();
    let agent = FakeAgent::connect_with(mtls.clone(), &cred, "", true).await;
    let forged = format!("{}.anything", cred.agent_id);
    let first = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(hello(
            &cred.agent_id,
            "",
            true,
        ))),
        ..Default::default()
    };
    let err = open_session(ch.clone(), Some(&forged), first)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // The agent's certificate is no operator credential.
    let err = operator_client(mtls, None)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
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
async fn operators_can_authenticate_with_a_client_certificate_named_in_the_principals_file() {
    let pki = pki();
    let principals = ferry_coordinator::Principals::parse(
        r#"
[[principal]]
name = "ops"
role = "operator"
cert_subject = "CN=operator"
"#,
    )
    .unwrap();
    let coord = Coord::start_with(|c| {
        c.tls = Some(TlsPem {
            cert: pki.server.0.clone().into(),
            key: pki.server.1.clone().into(),
            client_ca: Some(pki.ca_pem.clone().into()),
        });
        c.principals = Some(principals);
    })
    .await;
    let ch = tls_channel(&coord, &pki, Some((&pki.client.0, &pki.client.1)))
        .await
        .unwrap();
    let who = operator_client(ch, None)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((who.name.as_str(), who.role.as_str()), ("ops", "operator"));
    // The same client without a certificate, or with one whose subject names nobody, is not a principal.
    let ch = tls_channel(&coord, &pki, None).await.unwrap();
    let err = operator_client(ch, Some(OPERATOR_TOKEN))
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let ch = tls_channel(&coord, &pki, Some((&pki.server.0, &pki.server.1)))
        .await
        .unwrap();
    let err = operator_client(ch, None)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    coord.shutdown().await;
}
