//! Operator principals against a real coordinator with a principals file: roles limit what each principal may
//! do (PERMISSION_DENIED naming the permission), tenants limit what it sees (other tenants' tasks and instances are
//! NOT_FOUND), a retarget without the password is refused, and every refusal is in the audit log — through gRPC
//! and ferryctl.

use std::process::Output;

use ferry_proto::v1 as pb;
use ferry_testkit::process::{Binaries, CoordinatorOptions, CoordinatorProcess, OperatorClient};
use tonic::Code;

const ADMIN: &str = "tok-admin-5f1c";
const VIEWER: &str = "tok-viewer-a8e2";
const OPS_ACME: &str = "tok-acme-03d9";
const OPS_GLOBEX: &str = "tok-globex-77b4";

fn sha256_hex(text: &str) -> anyhow::Result<String> {
    // The operator's own tool for it: `printf %s "$TOKEN" | sha256sum`.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{text}' | sha256sum"))
        .output()?;
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

fn instance(id: &str, tenant: &str) -> pb::Instance {
    pb::Instance {
        instance_id: id.into(),
        region: "ap-guangzhou".into(),
        uri: "mongodb://127.0.0.1:27018/?replicaSet=rs0".into(),
        username: "admin".into(),
        password: "dest-pw".into(),
        tenant: tenant.into(),
        ..Default::default()
    }
}

fn spec(name: &str, dest: &str, tenant: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        name: name.into(),
        region: "ap-guangzhou".into(),
        kind: pb::TaskKind::Cvm as i32,
        cvm_id: "ins-abc12345".into(),
        mongo_host: "127.0.0.1".into(),
        port: 27017,
        username: "root".into(),
        password: "src-pw".into(),
        destination_instance_id: dest.into(),
        tenant: tenant.into(),
        ..Default::default()
    }
}

async fn create(op: &OperatorClient, spec: pb::TaskSpec) -> Result<pb::Task, tonic::Status> {
    op.clone()
        .create_task(pb::CreateTaskRequest { spec: Some(spec) })
        .await
        .map(tonic::Response::into_inner)
}

async fn ferryctl(
    coord: &CoordinatorProcess,
    token: &str,
    args: &[&str],
) -> anyhow::Result<Output> {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token)?;
    Ok(
        tokio::process::Command::new(Binaries::locate()?.path("ferryctl"))
            .arg("--coordinator")
            .arg(coord.url())
            .arg("--plaintext")
            .arg("--token-file")
            .arg(&token_file)
            .args(args)
            .output()
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_tenants_limit_what_each_principal_sees_and_does() -> anyhow::Result<()> {
    let bins = Binaries::locate()?;
    let dir = tempfile::tempdir()?;
    let principals = dir.path().join("principals.toml");
    std::fs::write(
        &principals,
        format!(
            r#"
[[principal]]
name = "root"
role = "admin"
token_sha256 = "{}"

[[principal]]
name = "auditor"
role = "viewer"
token_sha256 = "{}"

[[principal]]
name = "ops-acme"
role = "operator"
tenants = ["acme"]
token_sha256 = "{}"

[[principal]]
name = "ops-globex"
role = "operator"
tenants = ["globex"]
token_sha256 = "{}"
"#,
            sha256_hex(ADMIN)?,
            sha256_hex(VIEWER)?,
            sha256_hex(OPS_ACME)?,
            sha256_hex(OPS_GLOBEX)?
        ),
    )?;
    let coord = CoordinatorProcess::start_with(
        &bins,
        &dir.path().join("coordinator"),
        CoordinatorOptions {
            extra_args: vec!["--principals-file".into(), principals.display().to_string()],
            ..Default::default()
        },
    )
    .await?;
    let admin = coord.client_with_token(ADMIN).await?;
    let viewer = coord.client_with_token(VIEWER).await?;
    let acme = coord.client_with_token(OPS_ACME).await?;
    let globex = coord.client_with_token(OPS_GLOBEX).await?;
    // The generated operator token means nothing once principals are configured.
    let err = coord
        .client()
        .await?
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    for (id, tenant) in [("cmgo-acme0001", "acme"), ("cmgo-glbx0001", "globex")] {
        admin
            .clone()
            .register_instance(pb::RegisterInstanceRequest {
                instance: Some(instance(id, tenant)),
            })
            .await?;
    }

    // Operators create in their own tenant (empty means their only tenant), never in another's or with another's
    // destination.
    let a = create(&acme, spec("acme orders", "cmgo-acme0001", "")).await?;
    assert_eq!(a.spec.as_ref().map(|s| s.tenant.as_str()), Some("acme"));
    let b = create(&globex, spec("globex orders", "cmgo-glbx0001", "globex")).await?;
    let err = create(&acme, spec("x", "cmgo-glbx0001", "globex"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = create(&acme, spec("y", "cmgo-glbx0001", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("unknown instance cmgo-glbx0001"),
        "{}",
        err.message()
    );

    // Tenant A cannot see or touch tenant B's task: it does not exist for them.
    let listed = acme
        .clone()
        .list_tasks(pb::ListTasksRequest::default())
        .await?
        .into_inner()
        .tasks;
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![a.id.as_str()]
    );
    let instances = acme
        .clone()
        .list_instances(pb::ListInstancesRequest::default())
        .await?
        .into_inner()
        .instances;
    assert_eq!(instances.len(), 1);
    assert_eq!(
        acme.clone()
            .get_task(pb::GetTaskRequest {
                task_id: b.id.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        acme.clone()
            .delete_task(pb::DeleteTaskRequest {
                task_id: b.id.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        acme.clone()
            .check_task(pb::CheckTaskRequest {
                task_id: b.id.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let out = ferryctl(&coord, OPS_ACME, &["task", "delete", &b.id]).await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );

    // A retarget without the password would send the stored password elsewhere: refused.
    let mut moved = spec("acme orders", "cmgo-acme0001", "acme");
    moved.password = String::new();
    moved.mongo_host = "127.0.0.9".into();
    let err = acme
        .clone()
        .update_task(pb::UpdateTaskRequest {
            task_id: a.id.clone(),
            spec: Some(moved),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("spec.password") && err.message().contains("mongo_host"));

    // The viewer reads everything and changes nothing; operators cannot enroll agents or read the audit log.
    let all = viewer
        .clone()
        .list_tasks(pb::ListTasksRequest::default())
        .await?
        .into_inner()
        .tasks;
    assert_eq!(all.len(), 2);
    let err = create(&viewer, spec("z", "cmgo-acme0001", "acme"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("tasks.write"), "{}", err.message());
    let out = ferryctl(&coord, VIEWER, &["task", "delete", &a.id]).await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tasks.write"),
        "{out:?}"
    );
    let err = acme
        .clone()
        .create_join_token(pb::CreateJoinTokenRequest {
            pool: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("agents.enroll"));
    let err = acme
        .clone()
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let who = ferryctl(&coord, OPS_ACME, &["whoami"]).await?;
    let who = String::from_utf8_lossy(&who.stdout);
    assert!(who.contains("ops-acme") && who.contains("acme"), "{who}");

    // Every refusal and change is in the audit log, with its principal.
    let out = ferryctl(&coord, ADMIN, &["audit", "list", "--principal", "ops-acme"]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for needle in [
        "CreateTask",
        "PERMISSION_DENIED",
        "DeleteTask",
        "NOT_FOUND",
        "UpdateTask",
        "INVALID_ARGUMENT",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(text.contains(&a.id));
    let out = ferryctl(&coord, ADMIN, &["audit", "list", "--principal", "auditor"]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CreateTask") && text.contains("tasks.write"),
        "{text}"
    );
    for secret in ["src-pw", "dest-pw", ADMIN, VIEWER, OPS_ACME, OPS_GLOBEX] {
        assert!(!text.contains(secret));
        assert!(
            !coord.logs().contains(secret),
            "{secret} in the coordinator log"
        );
    }
    Ok(())
}
