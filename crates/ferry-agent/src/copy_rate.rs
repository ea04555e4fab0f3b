//! The copy rate the `oplog_window` check assumes: configured (`--estimated-copy-rate`), else measured by this
//! agent's last full copy (kept in `<data-dir>/copy-rate`), else the checks' default.
//!
//! Owns the measurement file. Only copies that started from scratch and were large and long enough to be dominated
//! by transfer rather than start-up are recorded.

use std::path::Path;
use std::time::Duration;

use crate::config::AgentConfig;

const FILE: &str = "copy-rate";
/// Smallest copy a rate is learned from: smaller ones are dominated by planning and connection set-up.
pub const MIN_BYTES: u64 = 64 << 20;
/// Shortest copy a rate is learned from.
pub const MIN_DURATION: Duration = Duration::from_secs(5);

/// Records the rate of a finished from-scratch copy if it is big enough to mean something; returns the rate kept.
pub fn record(data_dir: &Path, bytes: u64, elapsed: Duration) -> std::io::Result<Option<u64>> {
    if bytes < MIN_BYTES || elapsed < MIN_DURATION {
        return Ok(None);
    }
    let rate = (bytes as f64 / elapsed.as_secs_f64()) as u64;
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, format!("{rate}\n"))?;
    std::fs::rename(&tmp, data_dir.join(FILE))?;
    Ok(Some(rate))
}

/// The last recorded rate, if any; an unreadable or malformed file counts as none.
pub fn load(data_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(data_dir.join(FILE))
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|rate| *rate > 0)
}

/// The rate for the checks and where it comes from; `(0, "")` lets the checks use their default.
pub fn choose(config: &AgentConfig) -> (u64, String) {
    if let Some(rate) = config.estimated_copy_rate {
        return (rate, "configured (--estimated-copy-rate)".to_owned());
    }
    match load(&config.data_dir) {
        Some(rate) => (rate, "measured by this agent's last full copy".to_owned()),
        None => (0, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_big_long_copies_are_learned_and_configuration_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new("https://127.0.0.1:1", dir.path());
        assert_eq!(choose(&config), (0, String::new()), "nothing measured yet");

        // Too small, too short: start-up dominated, not recorded.
        assert_eq!(
            record(dir.path(), 1 << 20, Duration::from_secs(60)).unwrap(),
            None
        );
        assert_eq!(
            record(dir.path(), 1 << 30, Duration::from_secs(1)).unwrap(),
            None
        );
        assert_eq!(load(dir.path()), None);

        // 1 GiB in 32 s: 32 MiB/s.
        let kept = record(dir.path(), 1 << 30, Duration::from_secs(32)).unwrap();
        assert_eq!(kept, Some(32 << 20));
        let (rate, origin) = choose(&config);
        assert_eq!(rate, 32 << 20);
        assert!(origin.contains("measured"), "{origin}");

        config.estimated_copy_rate = Some(8 << 20);
        let (rate, origin) = choose(&config);
        assert_eq!(rate, 8 << 20);
        assert!(origin.contains("configured"), "{origin}");
    }

    #[test]
    fn a_malformed_file_counts_as_no_measurement() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "fast\n").unwrap();
        assert_eq!(load(dir.path()), None);
        std::fs::write(dir.path().join(FILE), "0\n").unwrap();
        assert_eq!(load(dir.path()), None);
    }
}
