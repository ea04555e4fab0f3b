//! The `$v:2` update-diff applier (reference/mongodb.md §7.2-§7.3), applied exactly like the server:
//! `u` keeps a field's position, `i` moves or adds fields to the end, sub-diffs on a missing field are
//! ignored, type mismatches become `null`, array diffs resize with `l` and may combine it with `u<i>`/`s<i>`.
//! Field names are raw names, never paths. Pure functions over `bson::Document`; no IO, and it must not
//! share code with mongosim's own implementation.

use mongodb::bson::{Bson, Document};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Why a diff could not be applied; the server would have rejected the same diff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("malformed $v:2 diff: {0}")]
    Malformed(String),
}

enum Action<'a> {
    Delete,
    Update(&'a Bson),
    Insert,
    Sub(&'a Document),
}

/// Applies the `diff` document of a `$v:2` update entry (the value of `o.diff`) to `pre`.
pub fn apply_diff(pre: &Document, diff: &Document) -> Result<Document, DiffError> {
    apply_object(pre, diff)
}

fn section<'a>(diff: &'a Document, key: &str) -> Result<Option<&'a Document>, DiffError> {
    match diff.get(key) {
        None => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(other) => Err(DiffError::Malformed(format!(
            "section '{key}' must be a document, got {:?}",
            other.element_type()
        ))),
    }
}

fn apply_object(pre: &Document, diff: &Document) -> Result<Document, DiffError> {
    let mut table: HashMap<&str, Action<'_>> = HashMap::new();
    let mut to_append: Vec<(&str, &Bson)> = Vec::new();
    let claim = |table: &mut HashMap<&str, Action<'_>>, name: &str| -> Result<(), DiffError> {
        if table.contains_key(name) {
            return Err(DiffError::Malformed(format!(
                "field '{name}' appears in more than one section (server code 4728000)"
            )));
        }
        Ok(())
    };
    if let Some(d) = section(diff, "d")? {
        for (f, _) in d {
            claim(&mut table, f)?;
            table.insert(f.as_str(), Action::Delete);
        }
    }
    if let Some(u) = section(diff, "u")? {
        for (f, v) in u {
            claim(&mut table, f)?;
            table.insert(f.as_str(), Action::Update(v));
            to_append.push((f.as_str(), v));
        }
    }
    if let Some(i) = section(diff, "i")? {
        for (f, v) in i {
            claim(&mut table, f)?;
            table.insert(f.as_str(), Action::Insert);
            to_append.push((f.as_str(), v));
        }
    }
    for (key, value) in diff {
        match key.as_str() {
            "d" | "u" | "i" => {}
            "b" => {
                return Err(DiffError::Malformed(
                    "binary diffs ('b' section) are not supported".to_string(),
                ))
            }
            k if k.starts_with('s') => {
                let name = &k[1..];
                let Bson::Document(sub) = value else {
                    return Err(DiffError::Malformed(format!(
                        "sub-diff '{k}' must be a document"
                    )));
                };
                claim(&mut table, name)?;
                table.insert(name, Action::Sub(sub));
            }
            other => return Err(DiffError::Malformed(format!("unknown diff key '{other}'"))),
        }
    }

    let mut out = Document::new();
    let mut done: HashSet<&str> = HashSet::new();
    for (f, v) in pre {
        match table.get(f.as_str()) {
            None => {
                out.insert(f.clone(), v.clone());
            }
            Some(Action::Delete) | Some(Action::Insert) => {}
            Some(Action::Update(nv)) => {
                out.insert(f.clone(), (*nv).clone());
                done.insert(f.as_str());
            }
            Some(Action::Sub(sd)) => {
                out.insert(f.clone(), apply_sub(v, sd)?);
            }
        }
    }
    for (f, v) in to_append {
        if !done.contains(f) {
            out.insert(f.to_string(), v.clone());
        }
    }
    Ok(out)
}

fn is_array_diff(d: &Document) -> bool {
    matches!(d.get("a"), Some(Bson::Boolean(true)))
}

fn apply_sub(value: &Bson, sub: &Document) -> Result<Bson, DiffError> {
    if is_array_diff(sub) {
        match value {
            Bson::Array(arr) => Ok(Bson::Array(apply_array(arr, sub)?)),
            _ => {
                validate_array_diff(sub)?;
                Ok(Bson::Null)
            }
        }
    } else {
        match value {
            Bson::Document(d) => Ok(Bson::Document(apply_object(d, sub)?)),
            _ => {
                // Validate anyway so a malformed diff is reported whatever the pre-image.
                apply_object(&Document::new(), sub)?;
                Ok(Bson::Null)
            }
        }
    }
}

enum ArrayMod<'a> {
    Update(&'a Bson),
    Sub(&'a Document),
}

type ArrayDiff<'a> = (Option<usize>, BTreeMap<usize, ArrayMod<'a>>);

/// Bound on an array diff's `l` and indices: the longest array a 16 MiB document can hold. Element `i`
/// takes at least 2 + digits(i) bytes (its type, its decimal key, NUL; a `null` has no value), so no
/// valid post-image holds a longer array (1,987,591 elements). It keeps a malformed diff from padding
/// an array to billions of `null`s, and caps what one diff can make the agent allocate (the fuzzer
/// reached 5.6 million elements, about 550 MB, with the older bound of 16 MiB / 3).
const MAX_ARRAY_LEN: usize = longest_array(16 * 1024 * 1024);

/// The longest array whose elements (at 2 + digits(index) bytes each) fit in `bytes`.
const fn longest_array(bytes: usize) -> usize {
    let (mut n, mut used, mut digits, mut next_power) = (0, 0, 1, 10);
    while used + 2 + digits <= bytes {
        used += 2 + digits;
        n += 1;
        if n == next_power {
            digits += 1;
            next_power *= 10;
        }
    }
    n
}

fn parse_array_diff(diff: &Document) -> Result<ArrayDiff<'_>, DiffError> {
    let mut new_len = None;
    let mut mods = BTreeMap::new();
    for (key, value) in diff {
        match key.as_str() {
            "a" => {}
            "l" => {
                let n = match value {
                    Bson::Int32(n) if *n >= 0 => *n as usize,
                    Bson::Int64(n) if *n >= 0 => *n as usize,
                    _ => {
                        return Err(DiffError::Malformed(
                            "array diff 'l' must be a non-negative integer".to_string(),
                        ))
                    }
                };
                if n > MAX_ARRAY_LEN {
                    return Err(DiffError::Malformed(format!(
                        "array diff 'l' {n} exceeds {MAX_ARRAY_LEN}"
                    )));
                }
                new_len = Some(n);
            }
            k => {
                // An empty key, or one whose first character is not one byte, is no `u`/`s` entry (and must not
                // panic the split).
                let (kind, idx) = k
                    .split_at_checked(1)
                    .ok_or_else(|| DiffError::Malformed(format!("bad array diff key '{k}'")))?;
                let idx: usize = idx
                    .parse()
                    .ok()
                    .filter(|i| *i < MAX_ARRAY_LEN)
                    .ok_or_else(|| DiffError::Malformed(format!("bad array diff key '{k}'")))?;
                let m = match (kind, value) {
                    ("u", v) => ArrayMod::Update(v),
                    ("s", Bson::Document(d)) => ArrayMod::Sub(d),
                    _ => return Err(DiffError::Malformed(format!("bad array diff entry '{k}'"))),
                };
                if mods.insert(idx, m).is_some() {
                    return Err(DiffError::Malformed(format!(
                        "array index {idx} modified twice"
                    )));
                }
            }
        }
    }
    Ok((new_len, mods))
}

fn validate_array_diff(diff: &Document) -> Result<(), DiffError> {
    parse_array_diff(diff).map(|_| ())
}

fn apply_array(pre: &[Bson], diff: &Document) -> Result<Vec<Bson>, DiffError> {
    let (new_len, mods) = parse_array_diff(diff)?;
    let mut out = Vec::with_capacity(new_len.unwrap_or(pre.len()));
    for (idx, v) in pre.iter().enumerate() {
        if new_len.is_some_and(|n| idx >= n) {
            break;
        }
        match mods.get(&idx) {
            None => out.push(v.clone()),
            Some(ArrayMod::Update(nv)) => out.push((*nv).clone()),
            Some(ArrayMod::Sub(sd)) => out.push(apply_sub(v, sd)?),
        }
    }
    let last_mod = mods.keys().next_back().copied();
    loop {
        let idx = out.len();
        let need_len = new_len.is_some_and(|n| idx < n);
        let need_mod = last_mod.is_some_and(|m| idx <= m);
        if !need_len && !need_mod {
            break;
        }
        match mods.get(&idx) {
            Some(ArrayMod::Update(nv)) => out.push((*nv).clone()),
            _ => out.push(Bson::Null),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;
    use proptest::prelude::*;

    #[test]
    fn worked_example_inc() {
        let pre = doc! {"_id": 3, "a": 5, "b": 1};
        let out = apply_diff(&pre, &doc! {"u": {"b": 3}}).unwrap();
        assert_eq!(out, doc! {"_id": 3, "a": 5, "b": 3});
    }

    #[test]
    fn worked_example_set_nested() {
        let pre = doc! {"_id": 8, "a": 2, "b": {"c": 1}};
        let out = apply_diff(&pre, &doc! {"sb": {"i": {"d": 2}}}).unwrap();
        assert_eq!(out, doc! {"_id": 8, "a": 2, "b": {"c": 1, "d": 2}});
    }

    #[test]
    fn update_of_missing_fields_appends_in_diff_order() {
        let out = apply_diff(&doc! {"_id": 9}, &doc! {"u": {"z": 1, "a": 2}}).unwrap();
        assert_eq!(out, doc! {"_id": 9, "z": 1, "a": 2});
        let keys: Vec<_> = out.keys().cloned().collect();
        assert_eq!(keys, vec!["_id", "z", "a"]);
    }

    #[test]
    fn array_resize_with_sibling_changes() {
        let pre = doc! {"_id": 100, "a": 1, "b": 2, "arrayForSubdiff": ["G", {"a": "M"}, 1, 2, 3],
        "arrayForReplacement": [0, 1, 2, 3], "giantStr": "G"};
        let diff = doc! {"u": {"a": 2, "arrayForReplacement": [0]}, "i": {"c": 3},
        "sarrayForSubdiff": {"a": true, "l": 2, "s1": {"i": {"b": 3}}}};
        let out = apply_diff(&pre, &diff).unwrap();
        assert_eq!(
            out,
            doc! {"_id": 100, "a": 2, "b": 2, "arrayForSubdiff": ["G", {"a": "M", "b": 3}],
            "arrayForReplacement": [0], "giantStr": "G", "c": 3}
        );
    }

    #[test]
    fn nested_arrays_and_objects() {
        let pre = doc! {"arr_c": [["S", 1, 2, 3], "M"], "obj": {"x": {"a": 1, "b": 1, "c": ["M", 1, 2, 3], "str": "M"}}};
        let diff = doc! {"sarr_c": {"a": true, "s0": {"a": true, "l": 1}},
        "sobj": {"sx": {"d": {"a": false}, "u": {"b": 2}, "sc": {"a": true, "l": 1}}}};
        let out = apply_diff(&pre, &diff).unwrap();
        assert_eq!(
            out,
            doc! {"arr_c": [["S"], "M"], "obj": {"x": {"b": 2, "c": ["M"], "str": "M"}}}
        );
    }

    #[test]
    fn field_names_with_dots_and_dollars_are_raw_names() {
        let pre = doc! {"_id": 1, "a.b": 1, "a": {"b": 5}, "$x": {"y": 1}};
        let diff = doc! {"u": {"a.b": 2}, "s$x": {"i": {"z": 3}}};
        let out = apply_diff(&pre, &diff).unwrap();
        assert_eq!(
            out,
            doc! {"_id": 1, "a.b": 2, "a": {"b": 5}, "$x": {"y": 1, "z": 3}}
        );
    }

    #[test]
    fn insert_moves_existing_field_to_end() {
        let out = apply_diff(&doc! {"a": 1, "b": 2, "c": 3}, &doc! {"i": {"a": 9}}).unwrap();
        let keys: Vec<_> = out.keys().cloned().collect();
        assert_eq!(keys, vec!["b", "c", "a"]);
        assert_eq!(out.get_i32("a").unwrap(), 9);
    }

    #[test]
    fn type_mismatch_becomes_null_and_missing_subdiff_is_ignored() {
        let pre = doc! {"a": 1, "b": [1]};
        let diff = doc! {"sa": {"u": {"x": 1}}, "sb": {"u": {"x": 1}}, "sc": {"u": {"x": 1}}};
        let out = apply_diff(&pre, &diff).unwrap();
        assert_eq!(out, doc! {"a": Bson::Null, "b": Bson::Null});
    }

    #[test]
    fn array_update_beyond_end_pads_with_null() {
        let out = apply_diff(&doc! {"a": [1]}, &doc! {"sa": {"a": true, "u3": 7}}).unwrap();
        assert_eq!(out, doc! {"a": [1, Bson::Null, Bson::Null, 7]});
        let out = apply_diff(&doc! {"a": [1]}, &doc! {"sa": {"a": true, "l": 3}}).unwrap();
        assert_eq!(out, doc! {"a": [1, Bson::Null, Bson::Null]});
        let out = apply_diff(
            &doc! {"a": [1]},
            &doc! {"sa": {"a": true, "s2": {"u": {"x": 1}}}},
        )
        .unwrap();
        assert_eq!(out, doc! {"a": [1, Bson::Null, Bson::Null]});
    }

    #[test]
    fn huge_array_length_or_index_is_rejected() {
        // Found while writing the engine_diff fuzz target: these padded the array to billions of nulls (OOM or
        // capacity-overflow panic).
        let pre = doc! {"a": [1]};
        for diff in [
            doc! {"sa": {"a": true, "l": i32::MAX}},
            doc! {"sa": {"a": true, "l": 1_i64 << 62}},
            doc! {"sa": {"a": true, "u999999999": 1}},
            doc! {"sa": {"a": true, "s18446744073709551615": {"u": {"x": 1}}}},
        ] {
            let err = apply_diff(&pre, &diff).unwrap_err();
            assert!(matches!(err, DiffError::Malformed(_)), "{diff}: {err}");
        }
        let n = MAX_ARRAY_LEN as i64;
        let out = apply_diff(&pre, &doc! {"sa": {"a": true, "l": 3_i64}}).unwrap();
        assert_eq!(out, doc! {"a": [1, Bson::Null, Bson::Null]});
        assert!(apply_diff(&pre, &doc! {"sa": {"a": true, "l": n + 1}}).is_err());
    }

    #[test]
    fn array_diff_keys_that_are_empty_or_start_with_a_multibyte_character_are_errors() {
        // Found by the fuzz smoke test: `{"sa": {"a": true, "": ...}}` panicked splitting the key.
        let pre = doc! {"a": [1, 2]};
        for key in ["", "é1", "日0"] {
            let mut sub = doc! {"a": true};
            sub.insert(key, 5);
            let err = apply_diff(&pre, &doc! {"sa": sub}).unwrap_err();
            assert!(matches!(err, DiffError::Malformed(_)), "{key:?}: {err}");
        }
    }

    #[test]
    fn the_array_bound_is_the_longest_array_of_a_16_mib_document() {
        let bytes = |n: usize| {
            mongodb::bson::RawDocumentBuf::try_from(&doc! {"a": vec![Bson::Null; n]})
                .unwrap()
                .as_bytes()
                .len()
        };
        // The document's own framing ({"a": [...]}: 4 + 1 + 2 + 4 + 1 + 1 bytes) on top of the elements.
        let framing = bytes(0);
        assert_eq!(MAX_ARRAY_LEN, 1_987_591);
        assert!(bytes(MAX_ARRAY_LEN) - framing <= 16 * 1024 * 1024);
        assert!(bytes(MAX_ARRAY_LEN + 1) - framing > 16 * 1024 * 1024);
    }

    #[test]
    fn duplicate_field_across_sections_is_rejected() {
        let err = apply_diff(&doc! {"a": 1}, &doc! {"d": {"a": false}, "u": {"a": 2}}).unwrap_err();
        assert!(err.to_string().contains("4728000"));
    }

    #[test]
    fn empty_field_name_subdiff() {
        let out = apply_diff(&doc! {"": {"x": 1}}, &doc! {"s": {"u": {"x": 2}}}).unwrap();
        assert_eq!(out, doc! {"": {"x": 2}});
    }

    // ---- property tests: an independent diff calculator round-trips through the applier ----

    fn leaf() -> impl Strategy<Value = Bson> {
        prop_oneof![
            any::<i32>().prop_map(Bson::Int32),
            any::<i64>().prop_map(Bson::Int64),
            "[a-z]{0,4}".prop_map(Bson::String),
            any::<bool>().prop_map(Bson::Boolean),
            Just(Bson::Null),
        ]
    }

    fn value() -> impl Strategy<Value = Bson> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
                prop::collection::vec(("[a-c.$]{0,2}", inner), 0..4)
                    .prop_map(|kv| Bson::Document(kv.into_iter().collect())),
            ]
        })
    }

    fn document() -> impl Strategy<Value = Document> {
        prop::collection::vec(("[a-e.$]{1,2}", value()), 0..6)
            .prop_map(|kv| kv.into_iter().collect())
    }

    /// Calculates a diff turning `pre` into `post`, where `post` keeps surviving fields of `pre` in
    /// order and appends new ones (the shape the server produces).
    fn calc(pre: &Document, post: &Document) -> Document {
        let mut d = Document::new();
        let mut u = Document::new();
        let mut i = Document::new();
        let mut subs = Document::new();
        let kept: Vec<&String> = post
            .keys()
            .filter(|k| pre.contains_key(k.as_str()))
            .collect();
        let pre_kept: Vec<&String> = pre
            .keys()
            .filter(|k| post.contains_key(k.as_str()))
            .collect();
        let order_ok = kept == pre_kept;
        for k in pre.keys() {
            if !post.contains_key(k) {
                d.insert(k.clone(), false);
            }
        }
        for (k, v) in post {
            match pre.get(k) {
                None => {
                    i.insert(k.clone(), v.clone());
                }
                Some(old) if !order_ok => {
                    let _ = old;
                    i.insert(k.clone(), v.clone());
                }
                Some(old) if old == v => {}
                Some(Bson::Document(od)) if matches!(v, Bson::Document(_)) => {
                    if let Bson::Document(nd) = v {
                        subs.insert(format!("s{k}"), calc(od, nd));
                    }
                }
                Some(Bson::Array(oa)) if matches!(v, Bson::Array(_)) => {
                    if let Bson::Array(na) = v {
                        let mut ad = doc! {"a": true};
                        if na.len() < oa.len() {
                            ad.insert("l", na.len() as i32);
                        }
                        for (idx, nv) in na.iter().enumerate() {
                            if oa.get(idx) != Some(nv) {
                                ad.insert(format!("u{idx}"), nv.clone());
                            }
                        }
                        subs.insert(format!("s{k}"), ad);
                    }
                }
                Some(_) => {
                    u.insert(k.clone(), v.clone());
                }
            }
        }
        let mut out = Document::new();
        if !d.is_empty() {
            out.insert("d", d);
        }
        if !u.is_empty() {
            out.insert("u", u);
        }
        if !i.is_empty() {
            out.insert("i", i);
        }
        out.extend(subs);
        out
    }

    fn mutate(pre: &Document, seed: &[u8]) -> Document {
        let mut out = Document::new();
        for (n, (k, v)) in pre.iter().enumerate() {
            match seed.get(n).copied().unwrap_or(0) % 4 {
                0 => {
                    out.insert(k.clone(), v.clone());
                }
                1 => {}
                2 => {
                    out.insert(k.clone(), Bson::Int32(n as i32 * 7));
                }
                _ => {
                    let nv = match v {
                        Bson::Document(d) => Bson::Document(mutate(d, &seed[n.min(seed.len())..])),
                        Bson::Array(a) => {
                            let mut a = a.clone();
                            if seed.len().is_multiple_of(2) {
                                a.truncate(a.len() / 2);
                            } else {
                                a.push(Bson::String("new".into()));
                            }
                            Bson::Array(a)
                        }
                        other => other.clone(),
                    };
                    out.insert(k.clone(), nv);
                }
            }
        }
        out.insert(format!("new{}", seed.len()), Bson::Int64(seed.len() as i64));
        out
    }

    proptest! {
        #[test]
        fn calculated_diff_round_trips(pre in document(), seed in prop::collection::vec(any::<u8>(), 0..8)) {
            let post = mutate(&pre, &seed);
            let diff = calc(&pre, &post);
            let got = apply_diff(&pre, &diff).unwrap();
            prop_assert_eq!(&got, &post);
            // Re-applying a diff to its own result converges (idempotent setter, §7.6).
            let again = apply_diff(&got, &diff).unwrap();
            prop_assert_eq!(again, post);
        }

        #[test]
        fn arbitrary_diffs_never_panic(pre in document(), diff in document()) {
            let _ = apply_diff(&pre, &diff);
        }
    }
}
