//! Address classification shared by the binaries' plaintext guards.

/// Whether the `host[:port][/...]` part of a URL (what follows `http://`) names a loopback host: 127.0.0.0/8,
/// `::1` or `localhost`. Plaintext connections are only allowed to such hosts.
pub fn is_loopback_authority(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_count() {
        for (rest, loopback) in [
            ("127.0.0.1:7070", true),
            ("127.0.0.2:7070/x", true),
            ("[::1]:7070", true),
            ("localhost:7070", true),
            ("LOCALHOST", true),
            ("10.0.0.5:7070", false),
            ("coordinator.example:7070", false),
            ("127.0.0.1.nip.io:7070", false),
            ("[::ffff:10.0.0.1]:1", false),
        ] {
            assert_eq!(is_loopback_authority(rest), loopback, "{rest}");
        }
    }
}
