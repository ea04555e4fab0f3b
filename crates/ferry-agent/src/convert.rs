//! Conversions between the wire types (`ferry-proto`) and the engine's and checks' own types.
//!
//! Owns only mapping and the validation of what the agent receives (a command without a spec, a port out of
//! range, an unknown kind); it must not do IO. Passwords are copied into endpoints, never into messages.

use std::time::SystemTime;

use ferry_proto::v1 as pb;

/// Why a command could not be turned into local work.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConvertError {
    #[error("the command carries no task spec")]
    NoSpec,
    #[error("the command carries no destination")]
    NoDestination,
    #[error("port {0} is not in 1..65535")]
    Port(u32),
    #[error("task kind {0} is not CVM or PUBLIC_NETWORK")]
    Kind(i32),
    #[error("task id {0:?} is not a safe file name (lowercase letters, digits, '-')")]
    TaskId(String),
}

/// The source URI as the agent builds it: `mongodb://HOST:PORT/?directConnection=true`.
pub(crate) fn source_uri(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("mongodb://[{host}]:{port}/?directConnection=true")
    } else {
        format!("mongodb://{host}:{port}/?directConnection=true")
    }
}

fn port(spec: &pb::TaskSpec) -> Result<u16, ConvertError> {
    u16::try_from(spec.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ConvertError::Port(spec.port))
}

/// Validates a task id before it becomes a path component (`spool/<task_id>`).
pub(crate) fn safe_task_id(task_id: &str) -> Result<&str, ConvertError> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 64
        && task_id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(task_id)
    } else {
        Err(ConvertError::TaskId(task_id.to_owned()))
    }
}

pub(crate) fn engine_source(
    spec: Option<&pb::TaskSpec>,
) -> Result<ferry_engine::Endpoint, ConvertError> {
    let spec = spec.ok_or(ConvertError::NoSpec)?;
    Ok(ferry_engine::Endpoint {
        uri: source_uri(&spec.mongo_host, port(spec)?),
        username: spec.username.clone(),
        password: spec.password.clone(),
    })
}

pub(crate) fn engine_destination(
    destination: Option<&pb::Destination>,
) -> Result<ferry_engine::Endpoint, ConvertError> {
    let destination = destination.ok_or(ConvertError::NoDestination)?;
    Ok(ferry_engine::Endpoint {
        uri: destination.uri.clone(),
        username: destination.username.clone(),
        password: destination.password.clone(),
    })
}

fn op_time(ts: Option<&pb::OplogTimestamp>) -> Option<ferry_engine::OpTime> {
    ts.filter(|t| t.seconds != 0 || t.increment != 0)
        .map(|t| ferry_engine::OpTime {
            seconds: t.seconds,
            increment: t.increment,
        })
}

fn oplog_ts(ts: Option<ferry_engine::OpTime>) -> Option<pb::OplogTimestamp> {
    ts.map(|t| pb::OplogTimestamp {
        seconds: t.seconds,
        increment: t.increment,
    })
}

pub(crate) fn phase_to_pb(phase: ferry_engine::Phase) -> pb::TaskPhase {
    match phase {
        ferry_engine::Phase::DataSync => pb::TaskPhase::DataSync,
        ferry_engine::Phase::IndexCreation => pb::TaskPhase::IndexCreation,
        ferry_engine::Phase::OplogSync => pb::TaskPhase::OplogSync,
    }
}

/// A stored checkpoint back into the engine's type; `None` when absent or empty (start from scratch).
pub(crate) fn checkpoint_from_pb(
    checkpoint: Option<&pb::Checkpoint>,
) -> Option<ferry_engine::Checkpoint> {
    let checkpoint = checkpoint?;
    let phase = match pb::TaskPhase::try_from(checkpoint.phase) {
        Ok(pb::TaskPhase::DataSync) => ferry_engine::Phase::DataSync,
        Ok(pb::TaskPhase::IndexCreation) => ferry_engine::Phase::IndexCreation,
        Ok(pb::TaskPhase::OplogSync) => ferry_engine::Phase::OplogSync,
        Ok(pb::TaskPhase::Unspecified) | Err(_) => {
            if checkpoint.engine_state.is_empty() {
                return None;
            }
            ferry_engine::Phase::DataSync
        }
    };
    Some(ferry_engine::Checkpoint {
        phase,
        start_ts: op_time(checkpoint.start_ts.as_ref()),
        last_applied: op_time(checkpoint.last_applied.as_ref()),
        engine_state: checkpoint.engine_state.clone(),
    })
}

pub(crate) fn checkpoint_to_pb(checkpoint: &ferry_engine::Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        phase: phase_to_pb(checkpoint.phase) as i32,
        start_ts: oplog_ts(checkpoint.start_ts),
        last_applied: oplog_ts(checkpoint.last_applied),
        engine_state: checkpoint.engine_state.clone(),
        update_time: Some(prost_types::Timestamp::from(SystemTime::now())),
    }
}

pub(crate) fn progress_to_pb(progress: &ferry_engine::ProgressSnapshot) -> pb::Progress {
    pb::Progress {
        phase: phase_to_pb(progress.phase) as i32,
        collections: progress
            .collections
            .iter()
            .map(|c| pb::CollectionProgress {
                namespace: c.namespace.clone(),
                documents_copied: c.documents_copied,
                documents_estimated: c.documents_estimated,
                bytes_copied: c.bytes_copied,
                bytes_estimated: c.bytes_estimated,
                ranges_total: c.ranges_total,
                ranges_done: c.ranges_done,
                done: c.done,
                eta_seconds: opt_secs(c.eta_seconds),
            })
            .collect(),
        documents_copied: progress.documents_copied,
        documents_estimated: progress.documents_estimated,
        bytes_copied: progress.bytes_copied,
        bytes_estimated: progress.bytes_estimated,
        documents_per_second: progress.documents_per_second,
        bytes_per_second: progress.bytes_per_second,
        eta_seconds: progress
            .eta_seconds
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
            .unwrap_or(-1),
        indexes_built: progress.indexes_built,
        indexes_total: progress.indexes_total,
        last_applied: oplog_ts(progress.last_applied),
        source_newest: oplog_ts(progress.source_newest),
        lag_seconds: progress.lag_seconds,
        oplog_entries_applied: progress.oplog_entries_applied,
        spool_bytes: progress.spool_bytes,
        update_time: Some(prost_types::Timestamp::from(SystemTime::now())),
        spool_cap_bytes: progress.spool_cap_bytes,
        apply_entries_per_second: progress.apply_entries_per_second,
        source_entries_per_second: progress.source_entries_per_second,
        oplog_entries_read: progress.oplog_entries_read,
        catch_up_eta_seconds: opt_secs(progress.catch_up_eta_seconds),
        converging: progress.converging,
        spool_full_eta_seconds: opt_secs(progress.spool_full_eta_seconds),
        oplog_headroom_seconds: opt_secs(progress.oplog_headroom_seconds),
        paused: progress.paused,
        retries: progress.retries,
    }
}

/// The engine's limits from the proto (absent: unlimited).
pub(crate) fn throttle_from_pb(t: Option<&pb::Throttle>) -> ferry_engine::Throttle {
    let t = t.copied().unwrap_or_default();
    ferry_engine::Throttle {
        copy_documents_per_second: t.copy_documents_per_second,
        copy_bytes_per_second: t.copy_bytes_per_second,
        apply_entries_per_second: t.apply_entries_per_second,
        apply_bytes_per_second: t.apply_bytes_per_second,
    }
}

fn opt_secs(v: Option<u64>) -> i64 {
    v.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX))
}

pub(crate) fn completed_to_pb(completion: &ferry_engine::Completion) -> pb::TaskCompleted {
    pb::TaskCompleted {
        final_progress: Some(progress_to_pb(&completion.progress)),
        final_ts: oplog_ts(Some(completion.final_ts)),
        summary: completion.summary.clone(),
    }
}

/// The checks' input from a RunChecks command and what the agent knows about its host.
pub(crate) fn check_input(
    command: &pb::RunChecks,
    identity: &crate::identity::HostIdentity,
) -> Result<ferry_checks::CheckInput, ConvertError> {
    let spec = command.spec.as_ref().ok_or(ConvertError::NoSpec)?;
    let destination = command
        .destination
        .as_ref()
        .ok_or(ConvertError::NoDestination)?;
    let kind = match pb::TaskKind::try_from(spec.kind) {
        Ok(pb::TaskKind::Cvm) => ferry_checks::TaskKind::Cvm,
        Ok(pb::TaskKind::PublicNetwork) => ferry_checks::TaskKind::PublicNetwork,
        _ => return Err(ConvertError::Kind(spec.kind)),
    };
    let port = port(spec)?;
    let options = command.options.unwrap_or_default();
    Ok(ferry_checks::CheckInput {
        kind,
        cvm_id: spec.cvm_id.clone(),
        mongo_host: spec.mongo_host.clone(),
        port,
        source: ferry_checks::Endpoint {
            uri: source_uri(&spec.mongo_host, port),
            username: spec.username.clone(),
            password: spec.password.clone(),
        },
        databases: spec.databases.clone(),
        destination: ferry_checks::Endpoint {
            uri: destination.uri.clone(),
            username: destination.username.clone(),
            password: destination.password.clone(),
        },
        destination_region: destination.region.clone(),
        identity: local_identity(identity),
        copy_rate_bytes_per_second: options.copy_rate_bytes_per_second,
        copy_rate_origin: "given by the coordinator".to_owned(),
        item_timeout: if options.item_timeout_ms == 0 {
            ferry_checks::DEFAULT_ITEM_TIMEOUT
        } else {
            std::time::Duration::from_millis(u64::from(options.item_timeout_ms))
        },
    })
}

/// What the checks need to know about this host.
pub(crate) fn local_identity(
    identity: &crate::identity::HostIdentity,
) -> ferry_checks::LocalIdentity {
    ferry_checks::LocalIdentity {
        metadata_instance_id: identity.metadata.instance_id.clone(),
        metadata_region: identity.metadata.region.clone(),
        metadata_local_ipv4: identity.metadata.local_ipv4.clone(),
        interface_ips: identity.interface_ips.clone(),
        uptime_seconds: identity.uptime_seconds,
        metadata_error: identity.metadata.error.clone(),
    }
}

pub(crate) fn check_item_to_pb(item: &ferry_checks::CheckItem) -> pb::CheckItem {
    let status = match item.status {
        ferry_checks::CheckStatus::Pass => pb::CheckStatus::Pass,
        ferry_checks::CheckStatus::Warn => pb::CheckStatus::Warn,
        ferry_checks::CheckStatus::Fail => pb::CheckStatus::Fail,
        ferry_checks::CheckStatus::Skipped => pb::CheckStatus::Skipped,
    };
    pb::CheckItem {
        id: item.id.to_owned(),
        name: item.name.clone(),
        status: status as i32,
        message: item.message.clone(),
        fix: item.fix.clone(),
        finish_time: Some(prost_types::Timestamp::from(SystemTime::now())),
        duration_ms: u64::try_from(item.duration.as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_uri_brackets_ipv6() {
        assert_eq!(
            source_uri("127.0.0.5", 27017),
            "mongodb://127.0.0.5:27017/?directConnection=true"
        );
        assert_eq!(
            source_uri("::1", 27017),
            "mongodb://[::1]:27017/?directConnection=true"
        );
    }

    #[test]
    fn task_ids_that_could_escape_the_spool_dir_are_refused() {
        assert!(safe_task_id("task-0123456789ab").is_ok());
        for bad in ["", "../x", "a/b", "A", "task .x"] {
            assert!(safe_task_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checkpoint_round_trips() {
        let checkpoint = ferry_engine::Checkpoint {
            phase: ferry_engine::Phase::OplogSync,
            start_ts: Some(ferry_engine::OpTime {
                seconds: 10,
                increment: 1,
            }),
            last_applied: Some(ferry_engine::OpTime {
                seconds: 20,
                increment: 3,
            }),
            engine_state: b"{\"v\":1}".to_vec(),
        };
        let back = checkpoint_from_pb(Some(&checkpoint_to_pb(&checkpoint))).unwrap();
        assert_eq!(back.phase, checkpoint.phase);
        assert_eq!(back.start_ts, checkpoint.start_ts);
        assert_eq!(back.last_applied, checkpoint.last_applied);
        assert_eq!(back.engine_state, checkpoint.engine_state);
        assert!(checkpoint_from_pb(Some(&pb::Checkpoint::default())).is_none());
        assert!(checkpoint_from_pb(None).is_none());
    }

    #[test]
    fn ports_out_of_range_are_refused() {
        let spec = pb::TaskSpec {
            port: 70000,
            ..pb::TaskSpec::default()
        };
        assert!(engine_source(Some(&spec)).is_err());
        let spec = pb::TaskSpec {
            port: 0,
            ..pb::TaskSpec::default()
        };
        assert!(engine_source(Some(&spec)).is_err());
        assert!(engine_source(None).is_err());
    }
}
