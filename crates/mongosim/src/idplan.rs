//! `_id` access paths: turns a query filter into the `_id` intervals that can hold every
//! matching document, so reads and writes seek into the `_id`-ordered document map instead
//! of scanning the whole collection.
//!
//! Owns only the filter -> interval analysis. A plan is always a superset of the matching
//! documents; when it is marked `exact` it is exactly the matching set (every stored
//! document has a non-array `_id`, so `_id` predicates are plain comparisons). It must not
//! touch the store; `commands::query` iterates the intervals and re-checks candidates with
//! `filter::matches` unless the plan is exact.

use std::cmp::Ordering;
use std::ops::Bound;

use bson::{Bson, Document};

use crate::index::OrdBson;
use crate::value::type_bracket;

/// One `_id` interval, as `BTreeMap::range` takes it.
pub type Interval = (Bound<OrdBson>, Bound<OrdBson>);

/// Candidate `_id` intervals of a filter.
#[derive(Debug, Clone)]
pub struct IdPlan {
    /// Sorted, disjoint, non-empty intervals (empty: nothing can match).
    pub intervals: Vec<Interval>,
    /// The intervals hold exactly the matching documents (no re-check needed).
    pub exact: bool,
}

impl IdPlan {
    /// Every document (a full scan).
    pub fn all(exact: bool) -> Self {
        Self {
            intervals: vec![(Bound::Unbounded, Bound::Unbounded)],
            exact,
        }
    }

    fn none() -> Self {
        Self {
            intervals: Vec::new(),
            exact: true,
        }
    }

    fn point(v: &Bson) -> Self {
        Self {
            intervals: vec![(
                Bound::Included(OrdBson(v.clone())),
                Bound::Included(OrdBson(v.clone())),
            )],
            exact: true,
        }
    }

    /// `true` when the plan is a full scan.
    pub fn is_full(&self) -> bool {
        matches!(
            self.intervals.as_slice(),
            [(Bound::Unbounded, Bound::Unbounded)]
        )
    }

    /// Intersection (exact when both are); a linear sweep over both sorted lists.
    pub fn intersect(&self, other: &IdPlan) -> IdPlan {
        let (a, b) = (&self.intervals, &other.intervals);
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            let lo = max_lo(&a[i].0, &b[j].0);
            let hi = min_hi(&a[i].1, &b[j].1);
            if !is_empty(&lo, &hi) {
                out.push((lo, hi));
            }
            if cmp_hi(&a[i].1, &b[j].1) == Ordering::Less {
                i += 1;
            } else {
                j += 1;
            }
        }
        IdPlan {
            intervals: normalize(out),
            exact: self.exact && other.exact,
        }
    }

    fn union(parts: Vec<IdPlan>) -> IdPlan {
        let exact = parts.iter().all(|p| p.exact);
        let all: Vec<Interval> = parts.into_iter().flat_map(|p| p.intervals).collect();
        IdPlan {
            intervals: normalize(all),
            exact,
        }
    }

    /// The complement of an exact plan.
    fn complement(&self) -> IdPlan {
        let mut out = Vec::new();
        let mut prev: Bound<OrdBson> = Bound::Unbounded;
        let mut open_end = true;
        for (lo, hi) in &self.intervals {
            match lo {
                Bound::Unbounded => {}
                b => {
                    let gap_hi = flip(b);
                    if !is_empty(&prev, &gap_hi) {
                        out.push((prev.clone(), gap_hi));
                    }
                }
            }
            match hi {
                Bound::Unbounded => {
                    open_end = false;
                    break;
                }
                b => prev = flip(b),
            }
        }
        if open_end {
            out.push((prev, Bound::Unbounded));
        }
        IdPlan {
            intervals: out,
            exact: true,
        }
    }
}

fn flip(b: &Bound<OrdBson>) -> Bound<OrdBson> {
    match b {
        Bound::Included(v) => Bound::Excluded(v.clone()),
        Bound::Excluded(v) => Bound::Included(v.clone()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn cmp_lo(a: &Bound<OrdBson>, b: &Bound<OrdBson>) -> Ordering {
    match (a, b) {
        (Bound::Unbounded, Bound::Unbounded) => Ordering::Equal,
        (Bound::Unbounded, _) => Ordering::Less,
        (_, Bound::Unbounded) => Ordering::Greater,
        (Bound::Included(x), Bound::Included(y)) | (Bound::Excluded(x), Bound::Excluded(y)) => {
            x.cmp(y)
        }
        (Bound::Included(x), Bound::Excluded(y)) => x.cmp(y).then(Ordering::Less),
        (Bound::Excluded(x), Bound::Included(y)) => x.cmp(y).then(Ordering::Greater),
    }
}

fn cmp_hi(a: &Bound<OrdBson>, b: &Bound<OrdBson>) -> Ordering {
    match (a, b) {
        (Bound::Unbounded, Bound::Unbounded) => Ordering::Equal,
        (Bound::Unbounded, _) => Ordering::Greater,
        (_, Bound::Unbounded) => Ordering::Less,
        (Bound::Included(x), Bound::Included(y)) | (Bound::Excluded(x), Bound::Excluded(y)) => {
            x.cmp(y)
        }
        (Bound::Included(x), Bound::Excluded(y)) => x.cmp(y).then(Ordering::Greater),
        (Bound::Excluded(x), Bound::Included(y)) => x.cmp(y).then(Ordering::Less),
    }
}

fn max_lo(a: &Bound<OrdBson>, b: &Bound<OrdBson>) -> Bound<OrdBson> {
    if cmp_lo(a, b) == Ordering::Less {
        b.clone()
    } else {
        a.clone()
    }
}

fn min_hi(a: &Bound<OrdBson>, b: &Bound<OrdBson>) -> Bound<OrdBson> {
    if cmp_hi(a, b) == Ordering::Greater {
        b.clone()
    } else {
        a.clone()
    }
}

/// `true` when no value lies between `lo` and `hi` (`BTreeMap::range` would panic on some).
pub fn is_empty(lo: &Bound<OrdBson>, hi: &Bound<OrdBson>) -> bool {
    match (lo, hi) {
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
            match a.cmp(b) {
                Ordering::Greater => true,
                Ordering::Equal => {
                    !(matches!(lo, Bound::Included(_)) && matches!(hi, Bound::Included(_)))
                }
                Ordering::Less => false,
            }
        }
        _ => false,
    }
}

/// Sorts intervals and merges overlapping or touching ones.
fn normalize(mut v: Vec<Interval>) -> Vec<Interval> {
    v.sort_by(|a, b| cmp_lo(&a.0, &b.0));
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        if let Some(last) = out.last_mut() {
            // Does `lo` start at or before the end of `last` (or right at it, with no gap)?
            let joins = match (&lo, &last.1) {
                (Bound::Unbounded, _) | (_, Bound::Unbounded) => true,
                (
                    Bound::Included(a) | Bound::Excluded(a),
                    Bound::Included(b) | Bound::Excluded(b),
                ) => match a.cmp(b) {
                    Ordering::Less => true,
                    Ordering::Greater => false,
                    Ordering::Equal => {
                        matches!(lo, Bound::Included(_)) || matches!(last.1, Bound::Included(_))
                    }
                },
            };
            if joins {
                if cmp_hi(&hi, &last.1) == Ordering::Greater {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

/// The smallest value of a type bracket, when one can be built.
fn bracket_min(b: u8) -> Option<Bson> {
    Some(match b {
        1 => Bson::MinKey,
        2 => Bson::Null,
        3 => Bson::Double(f64::NAN),
        4 => Bson::String(String::new()),
        5 => Bson::Document(Document::new()),
        6 => Bson::Array(Vec::new()),
        7 => Bson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: Vec::new(),
        }),
        8 => Bson::ObjectId(bson::oid::ObjectId::from_bytes([0; 12])),
        9 => Bson::Boolean(false),
        10 => Bson::DateTime(bson::DateTime::from_millis(i64::MIN)),
        11 => Bson::Timestamp(bson::Timestamp {
            time: 0,
            increment: 0,
        }),
        127 => Bson::MaxKey,
        _ => return None,
    })
}

/// Bounds of the whole type bracket of `v` (`None` for brackets without a buildable bound).
fn bracket_bounds(v: &Bson) -> Option<Interval> {
    let b = type_bracket(v);
    let next = match b {
        1..=10 => b + 1,
        11 => 12,
        127 => 0,
        _ => return None,
    };
    let lo = Bound::Included(OrdBson(bracket_min(b)?));
    let hi = if next == 0 {
        Bound::Unbounded
    } else {
        // Bracket 12 (regex) has a buildable minimum: an empty pattern and options.
        let m = if next == 12 {
            Bson::RegularExpression(bson::Regex {
                pattern: String::new().try_into().ok()?,
                options: String::new().try_into().ok()?,
            })
        } else {
            bracket_min(next)?
        };
        Bound::Excluded(OrdBson(m))
    };
    Some((lo, hi))
}

fn is_operator_doc(cond: &Bson) -> Option<&Document> {
    match cond {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => Some(d),
        _ => None,
    }
}

/// Plan of one `_id` condition.
fn id_condition(cond: &Bson) -> IdPlan {
    let Some(ops) = is_operator_doc(cond) else {
        return match cond {
            // Regex equality means a pattern match; arrays never equal a stored `_id`.
            Bson::RegularExpression(_) | Bson::Array(_) => IdPlan::all(false),
            v => IdPlan::point(v),
        };
    };
    let mut plan = IdPlan::all(true);
    for (op, arg) in ops {
        let part = match op.as_str() {
            "$eq" => IdPlan::point(arg),
            "$in" => match arg {
                Bson::Array(items)
                    if !items
                        .iter()
                        .any(|i| matches!(i, Bson::RegularExpression(_))) =>
                {
                    IdPlan::union(items.iter().map(IdPlan::point).collect())
                }
                _ => IdPlan::all(false),
            },
            "$gt" | "$gte" | "$lt" | "$lte" => match bracket_bounds(arg) {
                Some((blo, bhi)) => {
                    let v = OrdBson(arg.clone());
                    let (lo, hi) = match op.as_str() {
                        "$gt" => (Bound::Excluded(v), bhi),
                        "$gte" => (Bound::Included(v), bhi),
                        "$lt" => (blo, Bound::Excluded(v)),
                        _ => (blo, Bound::Included(v)),
                    };
                    if is_empty(&lo, &hi) {
                        IdPlan::none()
                    } else {
                        IdPlan {
                            intervals: vec![(lo, hi)],
                            exact: true,
                        }
                    }
                }
                None => IdPlan::all(false),
            },
            _ => IdPlan::all(false),
        };
        plan = plan.intersect(&part);
    }
    plan
}

/// Plan of a whole filter (the conjunction of its top-level entries).
pub fn plan(filter: &Document) -> IdPlan {
    let mut plan = IdPlan::all(true);
    for (key, cond) in filter {
        let part = match key.as_str() {
            "_id" => id_condition(cond),
            "$and" | "$or" | "$nor" => match logical_items(cond) {
                Some(items) => {
                    let subs: Vec<IdPlan> = items.into_iter().map(plan_of).collect();
                    match key.as_str() {
                        "$and" => subs
                            .iter()
                            .fold(IdPlan::all(true), |acc, p| acc.intersect(p)),
                        "$or" => IdPlan::union(subs),
                        _ => {
                            let u = IdPlan::union(subs);
                            if u.exact {
                                u.complement()
                            } else {
                                IdPlan::all(false)
                            }
                        }
                    }
                }
                None => IdPlan::all(false),
            },
            "$comment" => IdPlan::all(true),
            _ => IdPlan::all(false),
        };
        plan = plan.intersect(&part);
        if plan.intervals.is_empty() && plan.exact {
            break;
        }
    }
    plan
}

fn plan_of(d: &Document) -> IdPlan {
    plan(d)
}

fn logical_items(cond: &Bson) -> Option<Vec<&Document>> {
    let Bson::Array(items) = cond else {
        return None;
    };
    if items.is_empty() {
        return None;
    }
    items
        .iter()
        .map(|i| match i {
            Bson::Document(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// `true` when evaluating `filter` can never fail, whatever the documents. Only such filters
/// get the full planner, so a seek never hides an error a scan would report.
pub fn never_errors(filter: &Document) -> bool {
    filter.iter().all(|(key, cond)| match key.as_str() {
        "$and" | "$or" | "$nor" => {
            logical_items(cond).is_some_and(|items| items.into_iter().all(never_errors))
        }
        "$comment" => true,
        k if k.starts_with('$') => false,
        _ => match is_operator_doc(cond) {
            None => !matches!(cond, Bson::RegularExpression(_)),
            Some(ops) => ops.iter().all(|(op, arg)| match op.as_str() {
                "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$exists" | "$comment" => true,
                "$in" | "$nin" => matches!(arg, Bson::Array(_)),
                _ => false,
            }),
        },
    })
}

/// `true` when every condition of `filter` is on the top-level `_id` only (so matching needs
/// nothing but the `_id`).
pub fn only_id(filter: &Document) -> bool {
    !filter.is_empty()
        && filter.iter().all(|(key, cond)| match key.as_str() {
            "_id" | "$comment" => true,
            "$and" | "$or" | "$nor" => {
                logical_items(cond).is_some_and(|items| items.into_iter().all(only_id))
            }
            _ => false,
        })
}
