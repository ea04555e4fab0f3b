//! Connection to the coordinator: channel (TLS unless `--plaintext`) and the bearer-token interceptor.
//!
//! Owns transport setup only; it must not render anything. The token is never printed.

use std::path::Path;
use std::time::Duration;

use ferry_proto::v1::migration_service_client::MigrationServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::CtlError;

/// The authenticated client type.
pub type Client = MigrationServiceClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// A token (None = send no authorization header).
    pub fn new(token: Option<&str>) -> Result<Self, CtlError> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        CtlError::Usage(
                            "the token contains characters not allowed in a header".to_owned(),
                        )
                    })
            })
            .transpose()
            .map(Self)
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Reads the operator token from a file or an environment variable.
pub fn read_token(file: Option<&Path>, env: Option<&str>) -> Result<Option<String>, CtlError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CtlError::Usage(format!("cannot read token file {}: {e}", path.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CtlError::Usage(format!(
                "token file {} is empty",
                path.display()
            )));
        }
        return Ok(Some(token.to_owned()));
    }
    if let Some(var) = env {
        let token = std::env::var(var)
            .map_err(|_| CtlError::Usage(format!("environment variable {var} is not set")))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(CtlError::Usage(format!(
                "environment variable {var} is empty"
            )));
        }
        return Ok(Some(token.to_owned()));
    }
    Ok(None)
}

/// Connects to `url` (https, or http with `plaintext`).
pub async fn connect(
    url: &str,
    plaintext: bool,
    tls_ca: Option<&Path>,
    token: BearerToken,
) -> Result<Client, CtlError> {
    if url.starts_with("http://") && !plaintext {
        return Err(CtlError::Usage(format!(
            "{url} is plaintext: use https://, or pass --plaintext (loopback and tests only)"
        )));
    }
    if let Some(rest) = url.strip_prefix("http://") {
        if plaintext && !ferry_core::net::is_loopback_authority(rest) {
            return Err(CtlError::Usage(format!(
                "--plaintext would send the operator token in clear to {url}: plaintext is only allowed to a \
                 loopback coordinator (127.0.0.0/8, ::1, localhost); use https://"
            )));
        }
    }
    if url.starts_with("https://") && plaintext {
        return Err(CtlError::Usage(format!(
            "{url} is https but --plaintext was given"
        )));
    }
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(CtlError::Usage(format!(
            "coordinator URL {url:?} must start with https:// (or http:// with --plaintext)"
        )));
    }
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| CtlError::Usage(format!("invalid coordinator URL {url}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    if !plaintext {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = tls_ca {
            let pem = std::fs::read(ca).map_err(|e| {
                CtlError::Usage(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| CtlError::Connect(format!("TLS setup for {url}: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        CtlError::Connect(format!(
            "cannot reach the coordinator at {url}: {}",
            source_chain(&e)
        ))
    })?;
    Ok(MigrationServiceClient::with_interceptor(channel, token))
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let cause = inner.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = inner.source();
    }
    text
}
