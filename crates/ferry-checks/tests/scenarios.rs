//! The check scenarios of issue #5 against mongosim: each gives exactly the expected FAIL or WARN item,
//! the items that cannot run are SKIPPED, and every other item passes.

// Test helpers outside #[test] functions panic on setup failures by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_checks::{
    run_checks, CheckInput, CheckItem, CheckStatus, Endpoint, LocalIdentity, TaskKind, ITEM_IDS,
};
use mongodb::bson::doc;
use mongosim::{Builder, MongoSim};

const SOURCE_PASSWORD: &str = "src-secret-pw";
const DESTINATION_PASSWORD: &str = "dst-secret-pw";
const CVM_ID: &str = "ins-7f3a9c01";
const REGION: &str = "ap-guangzhou";

use CheckStatus::{Fail, Skipped, Warn};

/// The items that cannot run once the source does not answer or rejects the login.
const AFTER_SOURCE_LOST: [&str; 8] = [
    "source_privileges",
    "source_topology",
    "versions",
    "oplog_window",
    "databases",
    "destination_conflicts",
    "destination_capacity",
    "source_auth",
];

struct Env {
    source: MongoSim,
    destination: MongoSim,
}

impl Env {
    async fn start() -> Self {
        Self::with(source_builder(), destination_builder()).await
    }

    async fn with(source: Builder, destination: Builder) -> Self {
        let env = Self {
            source: source.start().await.unwrap(),
            destination: destination.start().await.unwrap(),
        };
        seed(&env.source, "root", SOURCE_PASSWORD).await;
        env
    }

    fn input(&self) -> CheckInput {
        let port = self.source.addr().port();
        CheckInput {
            kind: TaskKind::Cvm,
            cvm_id: CVM_ID.into(),
            mongo_host: "127.0.0.1".into(),
            port,
            source: Endpoint {
                uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
                username: "root".into(),
                password: SOURCE_PASSWORD.into(),
            },
            databases: vec!["shop".into(), "crm".into()],
            destination: Endpoint {
                uri: self.destination.uri(),
                username: "admin".into(),
                password: DESTINATION_PASSWORD.into(),
            },
            destination_region: REGION.into(),
            identity: LocalIdentity {
                metadata_instance_id: Some(CVM_ID.into()),
                metadata_region: Some(REGION.into()),
                metadata_local_ipv4: Some("127.0.0.1".into()),
                interface_ips: vec!["127.0.0.1".parse().unwrap()],
                uptime_seconds: Some(86_400 + 3_600),
                metadata_error: None,
            },
            copy_rate_bytes_per_second: 0,
            copy_rate_origin: String::new(),
            item_timeout: Duration::from_secs(5),
        }
    }

    async fn shutdown(self) {
        self.source.shutdown().await;
        self.destination.shutdown().await;
    }
}

fn source_builder() -> Builder {
    MongoSim::builder()
        .replset("rs0")
        .user("root", SOURCE_PASSWORD)
        .oplog_size_mb(64)
}

fn destination_builder() -> Builder {
    MongoSim::builder()
        .replset("dst")
        .user("admin", DESTINATION_PASSWORD)
}

async fn client(sim: &MongoSim, user: &str, password: &str) -> mongodb::Client {
    let mut options =
        mongodb::options::ClientOptions::parse(sim.uri_with_credentials(user, password))
            .await
            .unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(options).unwrap()
}

/// shop.orders (3), shop.carts (1), crm.people (2).
async fn seed(sim: &MongoSim, user: &str, password: &str) {
    let client = client(sim, user, password).await;
    let shop = client.database("shop");
    shop.collection("orders")
        .insert_many([
            doc! {"_id": 1, "total": 10},
            doc! {"_id": 2, "total": 20},
            doc! {"_id": 3, "total": 30},
        ])
        .await
        .unwrap();
    shop.collection("carts")
        .insert_one(doc! {"_id": 1, "items": []})
        .await
        .unwrap();
    client
        .database("crm")
        .collection("people")
        .insert_many([
            doc! {"_id": 1, "name": "ada"},
            doc! {"_id": 2, "name": "bob"},
        ])
        .await
        .unwrap();
}

/// Runs the checks, and asserts the streamed items equal the returned ones, in [`ITEM_IDS`] order.
async fn run(input: CheckInput) -> Vec<CheckItem> {
    let (items_tx, mut items_rx) = tokio::sync::mpsc::channel(ITEM_IDS.len());
    let returned = tokio::time::timeout(Duration::from_secs(60), run_checks(input, items_tx))
        .await
        .expect("checks finish");
    let mut streamed = Vec::new();
    while let Some(item) = items_rx.recv().await {
        streamed.push(item);
    }
    // Shown only when a test fails.
    for item in &returned {
        eprintln!(
            "{} {:?} ({:?}): {} | fix: {}",
            item.id, item.status, item.duration, item.message, item.fix
        );
    }
    let ids: Vec<&str> = returned.iter().map(|item| item.id).collect();
    assert_eq!(ids, ITEM_IDS.to_vec());
    let streamed_ids: Vec<&str> = streamed.iter().map(|item| item.id).collect();
    assert_eq!(streamed_ids, ids);
    for item in &returned {
        let text = format!("{} {}", item.message, item.fix);
        assert!(
            !text.contains(SOURCE_PASSWORD) && !text.contains(DESTINATION_PASSWORD),
            "password leaked in {item:?}"
        );
        match item.status {
            Warn | Fail => assert!(!item.fix.is_empty(), "no fix for {item:?}"),
            _ => {}
        }
        assert!(!item.message.is_empty(), "no message for {item:?}");
    }
    returned
}

/// Asserts `expected` statuses for the listed items and PASS for every other.
fn expect<'a>(
    items: &'a [CheckItem],
    expected: &[(&str, CheckStatus)],
) -> BTreeMap<&'a str, &'a CheckItem> {
    let by_id: BTreeMap<&str, &CheckItem> = items.iter().map(|item| (item.id, item)).collect();
    for item in items {
        let want = expected
            .iter()
            .find(|(id, _)| *id == item.id)
            .map(|(_, status)| *status)
            .unwrap_or(CheckStatus::Pass);
        assert_eq!(
            item.status, want,
            "{}: {} | fix: {}",
            item.id, item.message, item.fix
        );
    }
    by_id
}

fn skipped(ids: &[&'static str]) -> Vec<(&'static str, CheckStatus)> {
    ids.iter().map(|id| (*id, Skipped)).collect()
}

#[tokio::test]
async fn all_good_passes_every_item() {
    let env = Env::start().await;
    let items = run(env.input()).await;
    let by_id = expect(&items, &[]);
    assert!(
        by_id["cvm_identity"].message.contains("1 d 1 h"),
        "{}",
        by_id["cvm_identity"].message
    );
    assert!(by_id["source_topology"].message.contains("rs0"));
    assert!(by_id["versions"].message.contains("7.0"));
    assert!(by_id["oplog_window"]
        .message
        .contains("estimated copy time"));
    assert!(
        by_id["databases"].message.contains("shop") && by_id["databases"].message.contains("crm")
    );
    env.shutdown().await;
}

#[tokio::test]
async fn wrong_cvm_id_fails_cvm_identity() {
    let env = Env::start().await;
    let mut input = env.input();
    input.cvm_id = "ins-00000000".into();
    let items = run(input).await;
    let by_id = expect(&items, &[("cvm_identity", Fail)]);
    let item = by_id["cvm_identity"];
    assert!(
        item.message.contains(CVM_ID) && item.message.contains("ins-00000000"),
        "{}",
        item.message
    );
    env.shutdown().await;
}

#[tokio::test]
async fn mongodb_ip_not_on_this_host_fails_private_ip() {
    let env = Env::start().await;
    let mut input = env.input();
    // The agent runs on a host whose only address is 127.0.0.5: the task's 127.0.0.1 is elsewhere.
    input.identity.interface_ips = vec!["127.0.0.5".parse().unwrap()];
    input.identity.metadata_local_ipv4 = Some("127.0.0.5".into());
    let items = run(input).await;
    let by_id = expect(&items, &[("private_ip", Fail)]);
    let item = by_id["private_ip"];
    assert!(
        item.message
            .contains("127.0.0.1 is not an address of this host"),
        "{}",
        item.message
    );
    assert!(item.fix.contains("127.0.0.5"), "{}", item.fix);
    env.shutdown().await;
}

#[tokio::test]
async fn other_region_fails_region() {
    let env = Env::start().await;
    let mut input = env.input();
    input.destination_region = "ap-shanghai".into();
    let items = run(input).await;
    let by_id = expect(&items, &[("region", Fail)]);
    assert!(by_id["region"].message.contains("cross-region"));
    env.shutdown().await;
}

#[tokio::test]
async fn closed_port_fails_source_reachable_and_skips_what_needs_the_source() {
    let env = Env::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut input = env.input();
    input.port = port;
    input.source.uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    let items = run(input).await;
    let mut wanted = skipped(&AFTER_SOURCE_LOST);
    wanted.push(("source_reachable", Fail));
    let by_id = expect(&items, &wanted);
    let item = by_id["source_reachable"];
    assert!(
        item.fix.contains(&format!("port {port}")) && item.fix.contains("security group"),
        "{}",
        item.fix
    );
    assert!(by_id["source_auth"].message.contains("source_reachable"));
    env.shutdown().await;
}

#[tokio::test]
async fn wrong_password_fails_source_auth() {
    let env = Env::start().await;
    let mut input = env.input();
    input.source.password = "not-the-password".into();
    let items = run(input).await;
    let mut wanted = skipped(&AFTER_SOURCE_LOST[..7]);
    wanted.push(("source_auth", Fail));
    let by_id = expect(&items, &wanted);
    assert!(by_id["source_auth"].message.contains("root"));
    assert!(!by_id["source_auth"].message.contains("not-the-password"));
    assert!(by_id["databases"].message.contains("source_auth"));
    env.shutdown().await;
}

#[tokio::test]
async fn user_without_oplog_access_fails_source_privileges() {
    let source =
        source_builder().user_with_roles("reader", "reader-pw", &[("readAnyDatabase", "admin")]);
    let env = Env::with(source, destination_builder()).await;
    let mut input = env.input();
    input.source.username = "reader".into();
    input.source.password = "reader-pw".into();
    let items = run(input).await;
    let by_id = expect(
        &items,
        &[("source_privileges", Fail), ("oplog_window", Skipped)],
    );
    let item = by_id["source_privileges"];
    assert!(item.message.contains("local.oplog.rs"), "{}", item.message);
    assert!(!item.message.contains("database shop"), "{}", item.message);
    assert!(item.fix.contains("local"), "{}", item.fix);
    env.shutdown().await;
}

#[tokio::test]
async fn single_node_fails_source_topology() {
    let env = Env::with(source_builder().single_node(), destination_builder()).await;
    let items = run(env.input()).await;
    let by_id = expect(
        &items,
        &[("source_topology", Fail), ("oplog_window", Skipped)],
    );
    assert!(by_id["source_topology"].message.contains("no oplog"));
    assert!(by_id["oplog_window"].message.contains("source_topology"));
    env.shutdown().await;
}

#[tokio::test]
async fn missing_database_fails_databases() {
    let env = Env::start().await;
    let mut input = env.input();
    input.databases = vec!["shop".into(), "billing".into()];
    let items = run(input).await;
    let by_id = expect(&items, &[("databases", Fail)]);
    assert!(
        by_id["databases"].message.contains("billing"),
        "{}",
        by_id["databases"].message
    );
    env.shutdown().await;
}

#[tokio::test]
async fn system_database_selected_fails_databases() {
    let env = Env::start().await;
    let mut input = env.input();
    input.databases = vec!["shop".into(), "admin".into()];
    let items = run(input).await;
    let by_id = expect(&items, &[("databases", Fail)]);
    assert!(
        by_id["databases"].message.contains("system database admin"),
        "{}",
        by_id["databases"].message
    );
    env.shutdown().await;
}

#[tokio::test]
async fn conflicting_destination_collection_fails_destination_conflicts() {
    let env = Env::start().await;
    let dst = client(&env.destination, "admin", DESTINATION_PASSWORD).await;
    dst.database("shop")
        .collection("orders")
        .insert_one(doc! {"_id": 99})
        .await
        .unwrap();
    dst.database("shop")
        .create_collection("carts")
        .await
        .unwrap();
    let items = run(env.input()).await;
    let by_id = expect(&items, &[("destination_conflicts", Fail)]);
    let item = by_id["destination_conflicts"];
    assert!(item.message.contains("shop.orders"), "{}", item.message);
    assert!(
        !item.message.contains("shop.carts"),
        "empty collections are no conflict: {}",
        item.message
    );
    env.shutdown().await;
}

#[tokio::test]
async fn oplog_window_smaller_than_copy_time_fails_oplog_window() {
    // A 4 KiB oplog that has rolled over: its window is the few seconds between its oldest and newest entries.
    let source = source_builder().oplog_size_bytes(4096);
    let env = Env::with(source, destination_builder()).await;
    let writer = client(&env.source, "root", SOURCE_PASSWORD).await;
    let filler: Vec<_> = (0..100)
        .map(|i| doc! {"_id": i, "pad": "x".repeat(100)})
        .collect();
    writer
        .database("shop")
        .collection("filler")
        .insert_many(filler)
        .await
        .unwrap();
    let mut input = env.input();
    input.copy_rate_bytes_per_second = 1;
    let items = run(input).await;
    let by_id = expect(&items, &[("oplog_window", Fail)]);
    let item = by_id["oplog_window"];
    assert!(
        item.message.contains("< estimated copy time"),
        "{}",
        item.message
    );
    assert!(item.message.contains("at 1 B/s"), "{}", item.message);
    assert!(item.message.contains("spool"), "{}", item.message);
    assert!(
        item.message.starts_with("oplog window ")
            && item
                .message
                .contains("(oldest to newest entry; the oplog has rolled over: "),
        "a rolled-over oplog is measured oldest to newest: {}",
        item.message
    );
    env.shutdown().await;
}

#[tokio::test]
async fn public_network_task_skips_cvm_items() {
    let env = Env::start().await;
    let mut input = env.input();
    input.kind = TaskKind::PublicNetwork;
    input.cvm_id = String::new();
    input.identity = LocalIdentity::default();
    let items = run(input).await;
    let by_id = expect(&items, &skipped(&["cvm_identity", "private_ip", "region"]));
    assert_eq!(
        by_id["region"].message,
        "public-network task: no CVM to check"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn older_destination_warns_versions() {
    let env = Env::with(
        source_builder().server_version("7.0.14"),
        destination_builder().server_version("6.0.3"),
    )
    .await;
    let items = run(env.input()).await;
    let by_id = expect(&items, &[("versions", Warn)]);
    assert!(by_id["versions"]
        .message
        .contains("source 7.0.14, destination 6.0.3"));
    env.shutdown().await;
}

#[tokio::test]
async fn wrong_destination_password_fails_destination_auth() {
    let env = Env::start().await;
    let mut input = env.input();
    input.destination.password = "nope".into();
    let items = run(input).await;
    expect(
        &items,
        &[
            ("destination_auth", Fail),
            ("versions", Skipped),
            ("destination_conflicts", Skipped),
            ("destination_capacity", Skipped),
        ],
    );
    env.shutdown().await;
}

#[tokio::test]
async fn silent_source_times_out_instead_of_hanging() {
    let env = Env::start().await;
    // Accepts TCP connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let mut input = env.input();
    input.port = port;
    input.source.uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    input.item_timeout = Duration::from_secs(1);
    let items = run(input).await;
    let mut wanted = skipped(&AFTER_SOURCE_LOST[..7]);
    wanted.push(("source_auth", Fail));
    let by_id = expect(&items, &wanted);
    assert!(by_id["source_auth"].duration < Duration::from_secs(3));
    holder.abort();
    env.shutdown().await;
}

#[tokio::test]
async fn closed_receiver_still_returns_every_item() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    let endpoint = Endpoint {
        uri: uri.clone(),
        username: "root".into(),
        password: SOURCE_PASSWORD.into(),
    };
    let input = CheckInput {
        kind: TaskKind::PublicNetwork,
        cvm_id: String::new(),
        mongo_host: "127.0.0.1".into(),
        port,
        source: endpoint.clone(),
        databases: Vec::new(),
        destination: endpoint,
        destination_region: REGION.into(),
        identity: LocalIdentity::default(),
        copy_rate_bytes_per_second: 0,
        copy_rate_origin: String::new(),
        item_timeout: Duration::from_secs(2),
    };
    let (items_tx, items_rx) = tokio::sync::mpsc::channel(1);
    drop(items_rx);
    let items = run_checks(input, items_tx).await;
    let ids: Vec<&str> = items.iter().map(|item| item.id).collect();
    assert_eq!(ids, ITEM_IDS.to_vec());
    let failed: Vec<&str> = items
        .iter()
        .filter(|i| i.status == Fail)
        .map(|i| i.id)
        .collect();
    assert_eq!(failed, ["source_reachable", "destination_reachable"]);
    assert!(!ferry_checks::checks_passed(&items));
}

/// Creates the view `db.name` on `on` (mongosim lists views but cannot evaluate them, like a read that must not
/// happen on a production source).
async fn create_view(sim: &MongoSim, db: &str, name: &str, on: &str) {
    client(sim, "root", SOURCE_PASSWORD)
        .await
        .database(db)
        .run_command(
            doc! {"create": name, "viewOn": on, "pipeline": [{"$match": {"total": {"$gt": 10}}}]},
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_view_first_in_its_database_is_never_read() {
    let env = Env::start().await;
    // `aaa_totals` sorts before `carts` and `orders`; `reports` holds nothing but a view.
    create_view(&env.source, "shop", "aaa_totals", "orders").await;
    create_view(&env.source, "reports", "big_orders", "orders").await;
    let source = client(&env.source, "root", SOURCE_PASSWORD).await;
    let unreadable = source
        .database("shop")
        .collection::<mongodb::bson::Document>("aaa_totals")
        .find_one(doc! {})
        .await;
    assert!(
        unreadable.is_err(),
        "the scenario needs a view that fails when read: {unreadable:?}"
    );
    let mut input = env.input();
    input.databases = vec!["shop".into(), "crm".into(), "reports".into()];
    let items = run(input).await;
    let by_id = expect(&items, &[]);
    let message = &by_id["source_privileges"].message;
    assert!(
        message.contains("shop (3 collection(s), of which 1 view(s) not read)"),
        "{message}"
    );
    assert!(message.contains("crm (1 collection(s))"), "{message}");
    assert!(
        message.contains("reports (1 view(s) only: listCollections allowed; read not proven"),
        "{message}"
    );
    // The views still count as namespaces the task migrates.
    assert!(
        by_id["destination_conflicts"]
            .message
            .contains("none of the 5 source collection(s)"),
        "{}",
        by_id["destination_conflicts"].message
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_fresh_source_estimates_its_oplog_window_from_capacity_and_write_rate() {
    // A replica set created a moment ago: its oplog spans about a second, but 64 MiB hold hours of these writes.
    let env = Env::start().await;
    let writer = client(&env.source, "root", SOURCE_PASSWORD).await;
    writer
        .database("shop")
        .collection("bulk")
        .insert_many((0..100).map(|i| doc! {"_id": i, "pad": "x".repeat(10_000)}))
        .await
        .unwrap();
    let mut input = env.input();
    // About 1 MiB to copy at 100 KiB/s: 10 s, far more than the oplog's span.
    input.copy_rate_bytes_per_second = 100 << 10;
    input.copy_rate_origin = "configured".into();
    let items = run(input).await;
    let by_id = expect(&items, &[]);
    let message = &by_id["oplog_window"].message;
    assert!(
        message.starts_with("oplog not yet full: ") && message.contains(" of 64.0 MiB used over "),
        "{message}"
    );
    assert!(
        message.contains("-> estimated window ") && message.contains("at the current write rate"),
        "{message}"
    );
    assert!(
        message.contains(">= estimated copy time")
            && message.contains("at 100.0 KiB/s, configured"),
        "{message}"
    );
    env.shutdown().await;
}
