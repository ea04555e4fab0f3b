//! The coordinator's error type and its mapping to `tonic::Status`: the one place where errors become status
//! codes. Handlers use `?`.

use ferry_core::CoreError;
use ferry_store::StoreError;

/// Why an operator or agent request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Invalid input or an illegal transition (decided by ferry-core).
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(err: ServiceError) -> Self {
        let message = err.to_string();
        match err {
            ServiceError::Core(CoreError::InvalidArgument { .. })
            | ServiceError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            ServiceError::Core(CoreError::IllegalTransition { .. })
            | ServiceError::Core(CoreError::Precondition(_))
            | ServiceError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ServiceError::NotFound(_) => tonic::Status::not_found(message),
            ServiceError::AlreadyExists(_) => tonic::Status::already_exists(message),
            ServiceError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(message),
            ServiceError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            ServiceError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            ServiceError::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            ServiceError::Unavailable(_) => tonic::Status::unavailable(message),
            ServiceError::Store(_) | ServiceError::Internal(_) => {
                tracing::error!(error = %message, "request failed on an internal error");
                tonic::Status::internal("internal error (see the coordinator log)")
            }
        }
    }
}
