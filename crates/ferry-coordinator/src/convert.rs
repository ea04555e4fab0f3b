//! Conversions between generated `ferry.v1` types and `ferry-core` domain types: the edge where input is validated
//! once and where secrets are stripped from everything that goes back to operators.
//!
//! Must not: make decisions (the coordinator does) or return a password in an operator-facing type.

use ferry_core::{
    AgentRecord, CheckItem, CheckStatus, Checkpoint, Instance, InstanceInput, OplogTs, Secret,
    Task, TaskKind, TaskPhase, TaskSpec, TaskSpecInput, TaskState,
};
use ferry_proto::v1 as pb;
use prost::Message;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A protobuf timestamp from Unix milliseconds.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    let nanos = i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0);
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos,
    }
}

fn millis(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos / 1_000_000))
}

/// Operator input (not yet validated) from a proto spec; `None` stands for a missing spec message.
pub fn spec_input(spec: Option<pb::TaskSpec>) -> TaskSpecInput {
    let spec = spec.unwrap_or_default();
    let kind = match spec.kind() {
        pb::TaskKind::Cvm => Some(TaskKind::Cvm),
        pb::TaskKind::PublicNetwork => Some(TaskKind::PublicNetwork),
        pb::TaskKind::Unspecified => None,
    };
    TaskSpecInput {
        name: spec.name,
        region: spec.region,
        kind,
        cvm_id: spec.cvm_id,
        mongo_host: spec.mongo_host,
        port: spec.port,
        username: spec.username,
        password: Secret::new(spec.password),
        destination_instance_id: spec.destination_instance_id,
        databases: spec.databases,
        require_verification: spec.require_verification,
        tenant: spec.tenant,
    }
}

/// Operator input (not yet validated) from a proto instance.
pub fn instance_input(instance: Option<pb::Instance>) -> InstanceInput {
    let instance = instance.unwrap_or_default();
    InstanceInput {
        instance_id: instance.instance_id,
        region: instance.region,
        uri: instance.uri,
        username: instance.username,
        password: Secret::new(instance.password),
        tenant: instance.tenant,
    }
}

/// The proto spec. `with_password` is true only for commands sent to the agent over the authenticated stream.
pub fn spec_to_pb(spec: &TaskSpec, with_password: bool) -> pb::TaskSpec {
    pb::TaskSpec {
        name: spec.name.clone(),
        region: spec.region.clone(),
        kind: match spec.kind {
            TaskKind::Cvm => pb::TaskKind::Cvm,
            TaskKind::PublicNetwork => pb::TaskKind::PublicNetwork,
        } as i32,
        cvm_id: spec
            .cvm_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        mongo_host: spec.mongo_host.clone(),
        port: u32::from(spec.port),
        username: spec.username.clone(),
        password: if with_password {
            spec.password.expose().to_owned()
        } else {
            String::new()
        },
        destination_instance_id: spec.destination_instance_id.to_string(),
        databases: spec.databases.clone(),
        require_verification: spec.require_verification,
        tenant: spec.tenant.clone(),
    }
}

/// The destination as sent to an agent (password included: it travels only inside the agent stream).
pub fn destination_to_pb(instance: &Instance) -> pb::Destination {
    pb::Destination {
        instance_id: instance.instance_id.to_string(),
        region: instance.region.clone(),
        uri: instance.uri.clone(),
        username: instance.username.clone(),
        password: instance.password.expose().to_owned(),
    }
}

/// The operator-facing instance: never the password.
pub fn instance_to_pb(instance: &Instance) -> pb::Instance {
    pb::Instance {
        instance_id: instance.instance_id.to_string(),
        region: instance.region.clone(),
        uri: instance.uri.clone(),
        username: instance.username.clone(),
        password: String::new(),
        password_set: instance.password.is_set(),
        create_time: Some(timestamp(instance.create_time_ms)),
        tenant: instance.tenant.clone(),
    }
}

pub fn state_to_pb(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::NotStarted => pb::TaskState::NotStarted,
        TaskState::Checking => pb::TaskState::Checking,
        TaskState::CheckPassed => pb::TaskState::CheckPassed,
        TaskState::CheckFailed => pb::TaskState::CheckFailed,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Completing => pb::TaskState::Completing,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Stopping => pb::TaskState::Stopping,
        TaskState::Failed => pb::TaskState::Failed,
    }
}

/// `None` for UNSPECIFIED (and unknown values).
pub fn state_from_pb(state: i32) -> Option<TaskState> {
    TaskState::ALL
        .into_iter()
        .find(|s| state_to_pb(*s) as i32 == state)
}

fn phase_to_pb(phase: Option<TaskPhase>) -> pb::TaskPhase {
    match phase {
        None => pb::TaskPhase::Unspecified,
        Some(TaskPhase::DataSync) => pb::TaskPhase::DataSync,
        Some(TaskPhase::IndexCreation) => pb::TaskPhase::IndexCreation,
        Some(TaskPhase::OplogSync) => pb::TaskPhase::OplogSync,
    }
}

pub fn phase_from_pb(phase: i32) -> Option<TaskPhase> {
    match pb::TaskPhase::try_from(phase).ok()? {
        pb::TaskPhase::Unspecified => None,
        pb::TaskPhase::DataSync => Some(TaskPhase::DataSync),
        pb::TaskPhase::IndexCreation => Some(TaskPhase::IndexCreation),
        pb::TaskPhase::OplogSync => Some(TaskPhase::OplogSync),
    }
}

fn status_to_pb(status: CheckStatus) -> pb::CheckStatus {
    match status {
        CheckStatus::Pending => pb::CheckStatus::Pending,
        CheckStatus::Pass => pb::CheckStatus::Pass,
        CheckStatus::Warn => pb::CheckStatus::Warn,
        CheckStatus::Fail => pb::CheckStatus::Fail,
        CheckStatus::Skipped => pb::CheckStatus::Skipped,
    }
}

fn status_from_pb(status: i32) -> CheckStatus {
    match pb::CheckStatus::try_from(status) {
        Ok(pb::CheckStatus::Pass) => CheckStatus::Pass,
        Ok(pb::CheckStatus::Warn) => CheckStatus::Warn,
        Ok(pb::CheckStatus::Fail) => CheckStatus::Fail,
        Ok(pb::CheckStatus::Skipped) => CheckStatus::Skipped,
        Ok(pb::CheckStatus::Pending | pb::CheckStatus::Unspecified) | Err(_) => {
            CheckStatus::Pending
        }
    }
}

pub fn check_to_pb(item: &CheckItem) -> pb::CheckItem {
    pb::CheckItem {
        id: item.id.clone(),
        name: item.name.clone(),
        status: status_to_pb(item.status) as i32,
        message: item.message.clone(),
        fix: item.fix.clone(),
        finish_time: item.finish_time_ms.map(timestamp),
        duration_ms: item.duration_ms,
    }
}

pub fn check_from_pb(item: pb::CheckItem) -> CheckItem {
    CheckItem {
        id: item.id,
        name: item.name,
        status: status_from_pb(item.status),
        message: item.message,
        fix: item.fix,
        finish_time_ms: item.finish_time.as_ref().map(millis),
        duration_ms: item.duration_ms,
    }
}

fn ts_to_pb(ts: Option<OplogTs>) -> Option<pb::OplogTimestamp> {
    ts.map(|t| pb::OplogTimestamp {
        seconds: t.seconds,
        increment: t.increment,
    })
}

fn ts_from_pb(ts: Option<pb::OplogTimestamp>) -> Option<OplogTs> {
    ts.map(|t| OplogTs {
        seconds: t.seconds,
        increment: t.increment,
    })
}

pub fn checkpoint_to_pb(cp: &Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        phase: phase_to_pb(cp.phase) as i32,
        start_ts: ts_to_pb(cp.start_ts),
        last_applied: ts_to_pb(cp.last_applied),
        engine_state: cp.engine_state.clone(),
        update_time: cp.update_time_ms.map(timestamp),
    }
}

pub fn checkpoint_from_pb(cp: pb::Checkpoint) -> Checkpoint {
    Checkpoint {
        phase: phase_from_pb(cp.phase),
        start_ts: ts_from_pb(cp.start_ts),
        last_applied: ts_from_pb(cp.last_applied),
        engine_state: cp.engine_state,
        update_time_ms: cp.update_time.as_ref().map(millis),
    }
}

/// The operator-facing task: password stripped, `agent_connected` as given.
pub fn task_to_pb(task: &Task, agent_connected: bool) -> pb::Task {
    let progress = if task.progress.is_empty() {
        None
    } else {
        pb::Progress::decode(task.progress.as_slice()).ok()
    };
    pb::Task {
        id: task.id.to_string(),
        spec: Some(spec_to_pb(&task.spec, false)),
        password_set: task.spec.password.is_set(),
        state: state_to_pb(task.state) as i32,
        phase: phase_to_pb(task.phase) as i32,
        checks: task.checks.iter().map(check_to_pb).collect(),
        progress,
        create_time: Some(timestamp(task.create_time_ms)),
        update_time: Some(timestamp(task.update_time_ms)),
        failure_reason: task.failure_reason.clone(),
        resumable: task.resumable,
        agent_id: task
            .agent_id
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        agent_connected,
        epoch: task.epoch.0,
        checkpoint: task.checkpoint.as_ref().map(checkpoint_to_pb),
        verification: task
            .verification
            .as_ref()
            .map(crate::verification::verification_to_pb),
        throttle: (!task.throttle.is_unlimited()).then(|| throttle_to_pb(&task.throttle)),
        paused: task.paused,
    }
}

/// The proto throttle.
pub fn throttle_to_pb(t: &ferry_core::Throttle) -> pb::Throttle {
    pb::Throttle {
        copy_documents_per_second: t.copy_documents_per_second,
        copy_bytes_per_second: t.copy_bytes_per_second,
        apply_entries_per_second: t.apply_entries_per_second,
        apply_bytes_per_second: t.apply_bytes_per_second,
    }
}

/// A throttle from operator input (all values are limits; 0 = unlimited).
pub fn throttle_from_pb(t: Option<pb::Throttle>) -> ferry_core::Throttle {
    let t = t.unwrap_or_default();
    ferry_core::Throttle {
        copy_documents_per_second: t.copy_documents_per_second,
        copy_bytes_per_second: t.copy_bytes_per_second,
        apply_entries_per_second: t.apply_entries_per_second,
        apply_bytes_per_second: t.apply_bytes_per_second,
    }
}

/// The operator-facing agent.
pub fn agent_to_pb(agent: &AgentRecord, connected: bool, task_ids: Vec<String>) -> pb::Agent {
    pb::Agent {
        agent_id: agent.agent_id.to_string(),
        cvm_instance_id: agent.cvm_instance_id.clone(),
        region: agent.region.clone(),
        private_ips: agent.private_ips.clone(),
        version: agent.version.clone(),
        hostname: agent.hostname.clone(),
        connected,
        last_seen_time: Some(timestamp(agent.last_seen_ms)),
        task_ids,
        pool: agent.pool,
        tenant: agent.tenant.clone(),
        enroll_time: (agent.enrolled_ms > 0).then(|| timestamp(agent.enrolled_ms)),
        revoke_time: agent.revoked_ms.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_facing_task_has_no_password() {
        let mut input = spec_input(Some(pb::TaskSpec {
            name: "n".into(),
            region: "ap-guangzhou".into(),
            kind: pb::TaskKind::PublicNetwork as i32,
            mongo_host: "127.0.0.1".into(),
            port: 27017,
            username: "u".into(),
            password: "topsecret".into(),
            destination_instance_id: "cmgo-6wk2mxa1".into(),
            ..Default::default()
        }));
        input.databases.clear();
        let spec = TaskSpec::try_from(input).unwrap();
        let task = Task::new(ferry_core::TaskId::generate(), spec, now_ms());
        let out = task_to_pb(&task, false);
        assert!(out.password_set);
        assert_eq!(out.spec.unwrap().password, "");
        assert_eq!(spec_to_pb(&task.spec, true).password, "topsecret");
    }

    #[test]
    fn states_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(state_from_pb(state_to_pb(s) as i32), Some(s));
        }
        assert_eq!(state_from_pb(0), None);
    }
}
