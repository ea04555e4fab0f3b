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
/// sorted by name, in a canonical form (`canonical_index_spec`): equal on two servers when the indexes
/// are the same.
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
        .map(canonical_index_spec)
        .collect();
    specs.sort_by_key(|d| d.get_str("name").map(str::to_owned).unwrap_or_default());
    Ok(specs)
}

/// An index spec in a form where equal means "the same index": `v` and `ns` removed, `key` kept as is
/// (its order matters), the other options in name order with whole numbers as Int64. `collMod` rewrites
/// an option at the end of the spec and `expireAfterSeconds` as a 64-bit integer (mongodb/mongo
/// `src/mongo/db/storage/bson_collection_catalog_entry.cpp`), which changes neither what the index does
/// nor how it is used; Ferry restores unique and TTL indexes with `collMod` at cut-over.
pub fn canonical_index_spec(mut spec: Document) -> Document {
    spec.remove("v");
    spec.remove("ns");
    let mut out = Document::new();
    if let Some(key) = spec.remove("key") {
        out.insert("key", ordered_key(key));
    }
    let mut rest: Vec<(String, mongodb::bson::Bson)> = spec.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in rest {
        let v = match v {
            mongodb::bson::Bson::Int32(n) => mongodb::bson::Bson::Int64(i64::from(n)),
            other => other,
        };
        out.insert(k, v);
    }
    out
}

/// An index key as a list of one-field documents: `Document` equality ignores field order, an index key's
/// order is part of the index.
fn ordered_key(key: mongodb::bson::Bson) -> mongodb::bson::Bson {
    match key {
        mongodb::bson::Bson::Document(d) => mongodb::bson::Bson::Array(
            d.into_iter()
                .map(|(k, v)| mongodb::bson::Bson::Document(doc! {k: v}))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_restored_by_coll_mod_is_the_same_index() {
        let created = doc! {"v": 2, "key": {"at": 1}, "expireAfterSeconds": 3600, "name": "at_1"};
        let restored =
            doc! {"v": 2, "key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 3600i64};
        assert_eq!(
            canonical_index_spec(created.clone()),
            canonical_index_spec(restored)
        );
        let other = doc! {"v": 2, "key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 60i64};
        assert_ne!(
            canonical_index_spec(created.clone()),
            canonical_index_spec(other)
        );
        let not_unique = doc! {"v": 2, "key": {"at": 1}, "name": "at_1"};
        let unique = doc! {"v": 2, "key": {"at": 1}, "name": "at_1", "unique": true};
        assert_ne!(
            canonical_index_spec(not_unique),
            canonical_index_spec(unique)
        );
        let ab = doc! {"key": {"a": 1, "b": 1}, "name": "x"};
        let ba = doc! {"key": {"b": 1, "a": 1}, "name": "x"};
        assert_ne!(canonical_index_spec(ab), canonical_index_spec(ba));
    }
}
