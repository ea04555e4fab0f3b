//! Bearer-token authentication: one interceptor per service (operator token for MigrationService, enrollment
//! token for AgentService). A missing or wrong token is `Unauthenticated`. Must not: log or echo tokens.

use std::sync::Arc;

use ferry_core::Secret;
use tonic::{Request, Status};

/// Builds an interceptor accepting exactly `authorization: Bearer <token>`.
pub fn bearer(
    token: Secret,
    audience: &'static str,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let token = Arc::new(token);
    move |req: Request<()>| {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(p)
                if token.is_set() && constant_time_eq(p.as_bytes(), token.expose().as_bytes()) =>
            {
                Ok(req)
            }
            Some(_) => {
                tracing::warn!(audience, "rejected a request with a wrong bearer token");
                Err(Status::unauthenticated(format!("invalid {audience} token")))
            }
            None => Err(Status::unauthenticated(format!(
                "missing {audience} token: send `authorization: Bearer <token>` metadata"
            ))),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    }

    #[test]
    fn only_the_right_token_passes() {
        let check = bearer(Secret::new("tok-123"), "operator");
        assert!(check(req(Some("Bearer tok-123"))).is_ok());
        assert_eq!(
            check(req(Some("Bearer tok-124"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check(req(Some("tok-123"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check(req(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let err = check(req(Some("Bearer tok-124"))).unwrap_err();
        assert!(!err.message().contains("tok-12"));
    }

    #[test]
    fn an_empty_configured_token_accepts_nothing() {
        let check = bearer(Secret::default(), "agent");
        assert!(check(req(Some("Bearer "))).is_err());
    }
}
