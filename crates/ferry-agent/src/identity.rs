//! What the agent knows about the host it runs on: its stable agent id, the cloud metadata (CVM instance id,
//! region, private IPv4), the interface addresses, hostname and uptime.
//!
//! Owns reading these locally; it must not talk to the coordinator. A metadata failure is never fatal: fields stay
//! empty and the error is kept so the checks can explain it.

use std::net::IpAddr;

use std::time::Duration;

use tracing::{debug, warn};

/// Values read from the cloud metadata service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `instance-id`, e.g. `ins-abcd1234`.
    pub instance_id: Option<String>,
    /// `placement/region`, e.g. `ap-guangzhou`.
    pub region: Option<String>,
    /// `local-ipv4`.
    pub local_ipv4: Option<String>,
    /// Why a value is missing, when it is.
    pub error: Option<String>,
}

/// Everything the agent reports about itself.
#[derive(Clone, Debug, Default)]
pub struct HostIdentity {
    /// Cloud metadata.
    pub metadata: Metadata,
    /// All interface addresses (loopback included; the checks decide what counts).
    pub interface_ips: Vec<IpAddr>,
    /// Host name, when readable.
    pub hostname: String,
    /// Host uptime in seconds (`/proc/uptime`), when readable.
    pub uptime_seconds: Option<u64>,
}

impl HostIdentity {
    /// Private IPs for the hello: non-loopback interface addresses plus the metadata `local-ipv4`.
    pub fn private_ips(&self) -> Vec<String> {
        let mut ips: Vec<String> = self
            .interface_ips
            .iter()
            .filter(|ip| !ip.is_loopback())
            .map(ToString::to_string)
            .collect();
        if let Some(ip) = &self.metadata.local_ipv4 {
            if !ips.contains(ip) {
                ips.push(ip.clone());
            }
        }
        ips
    }
}

/// Reads everything; never fails (missing values are empty).
pub async fn gather(metadata_url: &str, timeout: Duration) -> HostIdentity {
    let metadata = fetch_metadata(metadata_url, timeout).await;
    HostIdentity {
        metadata,
        interface_ips: interface_ips(),
        hostname: hostname(),
        uptime_seconds: uptime_seconds(),
    }
}

/// Reads `instance-id`, `placement/region` and `local-ipv4` under `base_url`, each with `timeout`.
pub async fn fetch_metadata(base_url: &str, timeout: Duration) -> Metadata {
    let base = if base_url.ends_with('/') {
        base_url.to_owned()
    } else {
        format!("{base_url}/")
    };
    let client = match reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            return Metadata {
                error: Some(format!("cannot build metadata HTTP client: {error}")),
                ..Metadata::default()
            }
        }
    };
    // The three reads run concurrently so an unresponsive service costs one timeout, not three.
    let (instance_id, region, local_ipv4) = futures::join!(
        fetch_one(&client, &base, "instance-id"),
        fetch_one(&client, &base, "placement/region"),
        fetch_one(&client, &base, "local-ipv4"),
    );
    let mut metadata = Metadata::default();
    let mut errors = Vec::new();
    for (path, result, slot) in [
        ("instance-id", instance_id, &mut metadata.instance_id),
        ("placement/region", region, &mut metadata.region),
        ("local-ipv4", local_ipv4, &mut metadata.local_ipv4),
    ] {
        match result {
            Ok(value) => *slot = Some(value),
            Err(error) => errors.push(format!("{path}: {error}")),
        }
    }
    if !errors.is_empty() {
        let error = format!("metadata service {base}: {}", errors.join("; "));
        warn!(%error, "cloud metadata incomplete");
        metadata.error = Some(error);
    }
    debug!(?metadata, "cloud metadata read");
    metadata
}

async fn fetch_one(client: &reqwest::Client, base: &str, path: &str) -> Result<String, String> {
    let response = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    let value = text.trim();
    if value.is_empty() {
        return Err("empty answer".to_owned());
    }
    Ok(value.to_owned())
}

/// Addresses of the host's interfaces (empty when they cannot be listed).
pub fn interface_ips() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces.into_iter().map(|i| i.ip()).collect(),
        Err(error) => {
            warn!(%error, "cannot list interface addresses");
            Vec::new()
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Seconds since boot from `/proc/uptime`.
pub fn uptime_seconds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    parse_uptime(&text)
}

fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let seconds: f64 = first.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds as u64)
}

/// Whether `id` has the agent id format: `agent-` + 12 lowercase hex digits.
pub fn is_valid_agent_id(id: &str) -> bool {
    id.strip_prefix("agent-").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_format() {
        assert!(is_valid_agent_id("agent-0123456789ab"));
        assert!(!is_valid_agent_id("agent-0123456789AB"));
        assert!(!is_valid_agent_id("agent-0123456789a"));
        assert!(!is_valid_agent_id("agent-0123456789abc"));
        assert!(!is_valid_agent_id("agnt-0123456789ab"));
        assert!(!is_valid_agent_id("agent-0123456789ag"));
    }

    #[test]
    fn uptime_parses_proc_format() {
        assert_eq!(parse_uptime("12345.67 54321.00\n"), Some(12345));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("abc 1"), None);
    }

    #[test]
    fn private_ips_skip_loopback_and_add_metadata_ip() {
        let identity = HostIdentity {
            metadata: Metadata {
                local_ipv4: Some("127.0.0.9".to_owned()),
                ..Metadata::default()
            },
            interface_ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            ..HostIdentity::default()
        };
        assert_eq!(identity.private_ips(), vec!["127.0.0.9".to_owned()]);
    }
}
