//! Driver helpers shared by the end-to-end tests and the demo: an authenticated client with short timeouts, and
//! index specs in a comparable form.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, Credential};
use mongodb::Client;

/// A client with SCRAM credentials (authSource admin) and a 10 s server-selection timeout.
pub async fn client(uri: &str, user: &str, password: &str) -> anyhow::Result<Client> {
    let mut options = ClientOptions::parse(uri).await?;
    options.credential = Some(
        Credential::builder()
            .username(user.to_string())
            .password(password.to_string())
            .source("admin".to_string())
            .build(),
    );
    options.server_selection_timeout = Some(Duration::from_secs(10));
    Ok(Client::with_options(options)?)
}

/// The collection's indexes as `listIndexes` returns them, without what a server adds on its own (`v`, `ns`),
/// sorted by name: equal on two servers when the indexes are the same.
pub async fn index_specs(client: &Client, db: &str, coll: &str) -> anyhow::Result<Vec<Document>> {
    let reply = client
        .database(db)
        .run_command(doc! { "listIndexes": coll })
        .await?;
    let mut specs: Vec<Document> = reply
        .get_document("cursor")?
        .get_array("firstBatch")?
        .iter()
        .filter_map(|b| b.as_document().cloned())
        .map(|mut d| {
            d.remove("v");
            d.remove("ns");
            d
        })
        .collect();
    specs.sort_by_key(|d| d.get_str("name").map(str::to_owned).unwrap_or_default());
    Ok(specs)
}
