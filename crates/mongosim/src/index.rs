//! Index definitions and key ordering: `OrdBson` (BSON comparison order as `Ord`), index
//! specs, and the key -> `_id` maps that enforce unique indexes.
//!
//! Owns index key extraction (dotted paths, sparse, partial filters) and the duplicate-key
//! error shape. It must not write documents or oplog entries (that is `store`'s job).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bson::{doc, Bson, Document};

use crate::error::{CmdResult, CommandError};
use crate::value::{compare, get_path};

/// A BSON value ordered the way the server orders index keys.
#[derive(Debug, Clone)]
pub struct OrdBson(pub Bson);

impl PartialEq for OrdBson {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        compare(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for OrdBson {}
impl PartialOrd for OrdBson {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdBson {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

/// One index of a collection.
#[derive(Debug, Clone)]
pub struct Index {
    /// The spec as listIndexes reports it (`v`, `key`, `name`, options).
    pub spec: Document,
    /// Index name.
    pub name: String,
    /// Key pattern.
    pub key: Document,
    /// Enforced uniqueness (always true for `_id_`).
    pub unique: bool,
    pub(crate) sparse: bool,
    pub(crate) partial: Option<Document>,
    /// Unique key -> `_id` (only for unique secondary indexes).
    pub(crate) entries: BTreeMap<Vec<OrdBson>, OrdBson>,
}

impl Index {
    /// Builds an index from a validated spec.
    pub fn from_spec(spec: Document) -> CmdResult<Self> {
        let name = spec
            .get_str("name")
            .map_err(|_| CommandError::failed_to_parse("index spec must have a string 'name'"))?
            .to_string();
        let key = spec
            .get_document("key")
            .map_err(|_| CommandError::failed_to_parse("index spec must have a 'key' document"))?
            .clone();
        if key.is_empty() {
            return Err(CommandError::new(67, "Index keys cannot be empty."));
        }
        let unique = crate::value::truthy(spec.get("unique")) || name == "_id_";
        let sparse = crate::value::truthy(spec.get("sparse"));
        let partial = spec.get_document("partialFilterExpression").ok().cloned();
        Ok(Self {
            spec,
            name,
            key,
            unique,
            sparse,
            partial,
            entries: BTreeMap::new(),
        })
    }

    pub(crate) fn is_id(&self) -> bool {
        self.name == "_id_"
    }

    /// The index key of a document, or `None` when the index does not cover it.
    pub(crate) fn key_of(&self, d: &Document) -> Option<Vec<OrdBson>> {
        if let Some(p) = &self.partial {
            if !crate::filter::matches(d, p).unwrap_or(false) {
                return None;
            }
        }
        let mut any = false;
        let vals: Vec<OrdBson> = self
            .key
            .keys()
            .map(|k| match get_path(d, k) {
                Some(v) => {
                    any = true;
                    OrdBson(v.clone())
                }
                None => OrdBson(Bson::Null),
            })
            .collect();
        if self.sparse && !any {
            return None;
        }
        Some(vals)
    }

    pub(crate) fn dup_error(&self, ns: &str, key: &[OrdBson]) -> CommandError {
        let mut pattern = Document::new();
        let mut value = Document::new();
        let mut shown = Vec::new();
        for ((k, dir), v) in self.key.iter().zip(key) {
            pattern.insert(k.clone(), dir.clone());
            value.insert(k.clone(), v.0.clone());
            shown.push(format!("{k}: {}", v.0));
        }
        CommandError::new(
            11000,
            format!(
                "E11000 duplicate key error collection: {ns} index: {} dup key: {{ {} }}",
                self.name,
                shown.join(", ")
            ),
        )
        .with_extra(doc! {"keyPattern": pattern, "keyValue": value})
    }
}
