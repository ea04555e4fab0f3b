//! Command errors as MongoDB reports them: a numeric `code`, its `codeName` and an `errmsg`.
//!
//! Owns the error codes table used by every command handler. It must not decide how an
//! error is framed on the wire (that is `server`'s job).

use bson::{doc, Document};

/// A failed command, rendered as `{ok: 0, errmsg, code, codeName}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code_name} ({code}): {errmsg}")]
pub struct CommandError {
    /// Numeric error code (`error_codes.yml`).
    pub code: i32,
    /// Symbolic code name.
    pub code_name: &'static str,
    /// Human readable message, shaped like the real server's.
    pub errmsg: String,
    /// Extra fields of the error (`keyPattern`/`keyValue` of a duplicate key).
    pub extra: Option<Box<Document>>,
}

/// Result of a command handler.
pub type CmdResult<T> = Result<T, CommandError>;

impl CommandError {
    /// Builds an error from a code; the name is looked up in the table.
    pub fn new(code: i32, errmsg: impl Into<String>) -> Self {
        Self {
            code,
            code_name: code_name(code),
            errmsg: errmsg.into(),
            extra: None,
        }
    }

    /// Adds extra fields reported next to `code` (e.g. `keyPattern`, `keyValue`).
    pub fn with_extra(mut self, extra: Document) -> Self {
        self.extra = Some(Box::new(extra));
        self
    }

    /// 2 BadValue.
    pub fn bad_value(msg: impl Into<String>) -> Self {
        Self::new(2, msg)
    }

    /// 9 FailedToParse.
    pub fn failed_to_parse(msg: impl Into<String>) -> Self {
        Self::new(9, msg)
    }

    /// 14 TypeMismatch.
    pub fn type_mismatch(msg: impl Into<String>) -> Self {
        Self::new(14, msg)
    }

    /// 26 NamespaceNotFound.
    pub fn ns_not_found(msg: impl Into<String>) -> Self {
        Self::new(26, msg)
    }

    /// The reply body of this error (without cluster time fields).
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "ok": 0.0,
            "errmsg": self.errmsg.clone(),
            "code": self.code,
            "codeName": self.code_name,
        };
        for (k, v) in self.extra.iter().flat_map(|d| d.iter()) {
            d.insert(k.clone(), v.clone());
        }
        d
    }
}

/// The `codeName` of a MongoDB error code, `"UnknownError"` for codes not in the table.
pub fn code_name(code: i32) -> &'static str {
    match code {
        1 => "InternalError",
        2 => "BadValue",
        4 => "NoSuchKey",
        9 => "FailedToParse",
        11 => "UserNotFound",
        13 => "Unauthorized",
        14 => "TypeMismatch",
        18 => "AuthenticationFailed",
        20 => "IllegalOperation",
        22 => "InvalidBSON",
        26 => "NamespaceNotFound",
        27 => "IndexNotFound",
        40 => "ConflictingUpdateOperators",
        43 => "CursorNotFound",
        48 => "NamespaceExists",
        50 => "MaxTimeMSExpired",
        52 => "DollarPrefixedFieldName",
        54 => "NotSingleValueField",
        59 => "CommandNotFound",
        66 => "ImmutableField",
        67 => "CannotCreateIndex",
        68 => "IndexAlreadyExists",
        72 => "InvalidOptions",
        73 => "InvalidNamespace",
        85 => "IndexOptionsConflict",
        86 => "IndexKeySpecsConflict",
        91 => "ShutdownInProgress",
        96 => "OperationFailed",
        112 => "WriteConflict",
        115 => "CommandNotSupported",
        136 => "CappedPositionLost",
        166 => "CommandNotSupportedOnView",
        189 => "PrimarySteppedDown",
        223 => "IllegalOpMsgFlag",
        225 => "TransactionTooOld",
        251 => "NoSuchTransaction",
        256 => "TransactionCommitted",
        262 => "ExceededTimeLimit",
        263 => "OperationNotSupportedInTransaction",
        276 => "IndexBuildAborted",
        286 => "ChangeStreamHistoryLost",
        334 => "MechanismUnavailable",
        352 => "UnsupportedOpQueryCommand",
        359 => "CannotConvertIndexToUnique",
        10107 => "NotWritablePrimary",
        10334 => "BSONObjectTooLarge",
        11000 => "DuplicateKey",
        11600 => "InterruptedAtShutdown",
        11601 => "Interrupted",
        11602 => "InterruptedDueToReplStateChange",
        13435 => "NotPrimaryNoSecondaryOk",
        13436 => "NotPrimaryOrSecondary",
        40414 => "IDLFailedToParse",
        40415 => "IDLUnknownField",
        40571 => "Location40571",
        _ => "UnknownError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_document_has_real_shape() {
        let e = CommandError::new(59, "no such command: 'x'");
        let d = e.to_document();
        assert_eq!(d.get_f64("ok").unwrap(), 0.0);
        assert_eq!(d.get_i32("code").unwrap(), 59);
        assert_eq!(d.get_str("codeName").unwrap(), "CommandNotFound");
    }
}
