//! Which agent runs a task: the agent enrolled for the task's CVM for CVM tasks, the least loaded agent enrolled
//! as a pool member for public-network tasks; in both cases only an agent whose enrollment allows the task's tenant.
//! The binding comes from the agent's enrollment (its credential), never from its hello. Pure functions over
//! snapshots; must not do IO.

use std::collections::HashMap;

use ferry_core::{AgentId, AgentRecord, Task, TaskKind};

/// Whether `agent` may run `task`.
pub fn eligible(task: &Task, agent: &AgentRecord) -> bool {
    if !agent.is_active() || !(agent.tenant.is_empty() || agent.tenant == task.spec.tenant) {
        return false;
    }
    match task.spec.kind {
        TaskKind::Cvm => task
            .spec
            .cvm_id
            .as_ref()
            .is_some_and(|c| c.as_str() == agent.cvm_instance_id),
        TaskKind::PublicNetwork => agent.pool,
    }
}

/// Picks an agent among the connected ones. `tasks` is every task (for the load of each agent). Prefers the agent
/// already assigned when it is still eligible and connected.
pub fn pick(task: &Task, connected: &[AgentRecord], tasks: &[Task]) -> Option<AgentId> {
    let mut candidates: Vec<&AgentRecord> =
        connected.iter().filter(|a| eligible(task, a)).collect();
    if let Some(current) = &task.agent_id {
        if candidates.iter().any(|a| &a.agent_id == current) {
            return Some(current.clone());
        }
    }
    let mut load: HashMap<&AgentId, usize> = HashMap::new();
    for t in tasks
        .iter()
        .filter(|t| t.state.is_active() && t.id != task.id)
    {
        if let Some(a) = &t.agent_id {
            *load.entry(a).or_default() += 1;
        }
    }
    candidates.sort_by_key(|a| {
        (
            load.get(&a.agent_id).copied().unwrap_or(0),
            a.agent_id.clone(),
        )
    });
    candidates.first().map(|a| a.agent_id.clone())
}

#[cfg(test)]
mod tests {
    use ferry_core::{InstanceId, Secret, TaskId, TaskSpec, TaskState};

    use super::*;

    fn agent(n: u8, cvm: &str, pool: bool) -> AgentRecord {
        AgentRecord {
            agent_id: AgentId::parse("a", &format!("agent-00000000000{n}")).unwrap(),
            cvm_instance_id: cvm.into(),
            region: "ap-guangzhou".into(),
            private_ips: vec![],
            version: "0".into(),
            hostname: "h".into(),
            pool,
            capabilities: vec![],
            last_seen_ms: 0,
            tenant: String::new(),
            enrolled_ms: 1,
            revoked_ms: None,
            credentials: vec![],
        }
    }

    fn task(kind: TaskKind, cvm: Option<&str>) -> Task {
        let spec = TaskSpec {
            name: "t".into(),
            region: "ap-guangzhou".into(),
            kind,
            cvm_id: cvm.map(|c| ferry_core::CvmId::parse("c", c).unwrap()),
            mongo_host: "127.0.0.1".into(),
            port: 27017,
            username: String::new(),
            password: Secret::default(),
            destination_instance_id: InstanceId::parse("d", "cmgo-6wk2mxa1").unwrap(),
            databases: vec![],
            require_verification: false,
            tenant: "default".into(),
        };
        Task::new(TaskId::generate(), spec, 0)
    }

    #[test]
    fn cvm_task_goes_to_its_cvm_agent_only() {
        let t = task(TaskKind::Cvm, Some("ins-abc12345"));
        let agents = [
            agent(1, "ins-zzz99999", true),
            agent(2, "ins-abc12345", false),
        ];
        assert_eq!(pick(&t, &agents, &[]), Some(agents[1].agent_id.clone()));
        assert_eq!(pick(&t, &agents[..1], &[]), None);
    }

    #[test]
    fn revoked_unenrolled_and_other_tenant_agents_are_never_picked() {
        let t = task(TaskKind::Cvm, Some("ins-abc12345"));
        let mut revoked = agent(1, "ins-abc12345", false);
        revoked.revoked_ms = Some(5);
        let mut unenrolled = agent(2, "ins-abc12345", false);
        unenrolled.enrolled_ms = 0;
        let mut other = agent(3, "ins-abc12345", false);
        other.tenant = "globex".into();
        assert_eq!(pick(&t, &[revoked, unenrolled, other.clone()], &[]), None);
        other.tenant = "default".into();
        assert_eq!(pick(&t, &[other.clone()], &[]), Some(other.agent_id));
    }

    #[test]
    fn public_task_goes_to_least_loaded_pool_agent() {
        let t = task(TaskKind::PublicNetwork, None);
        let agents = [
            agent(1, "", true),
            agent(2, "", true),
            agent(3, "ins-abc12345", false),
        ];
        let mut busy = task(TaskKind::PublicNetwork, None);
        busy.state = TaskState::Running;
        busy.agent_id = Some(agents[0].agent_id.clone());
        assert_eq!(pick(&t, &agents, &[busy]), Some(agents[1].agent_id.clone()));
    }
}

#[cfg(test)]
mod properties {
    use ferry_core::{InstanceId, Secret, TaskId, TaskSpec, TaskState};
    use proptest::prelude::*;

    use super::*;

    fn agent(n: usize, cvm: Option<usize>, pool: bool) -> AgentRecord {
        AgentRecord {
            agent_id: AgentId::parse("a", &format!("agent-{n:012x}")).unwrap(),
            cvm_instance_id: cvm.map(|c| format!("ins-{c:08}")).unwrap_or_default(),
            region: "ap-guangzhou".into(),
            private_ips: vec![],
            version: "0".into(),
            hostname: "h".into(),
            pool,
            capabilities: vec![],
            last_seen_ms: 0,
            tenant: String::new(),
            enrolled_ms: 1,
            revoked_ms: None,
            credentials: vec![],
        }
    }

    fn task(cvm: Option<usize>, agent: Option<AgentId>, active: bool) -> Task {
        let spec = TaskSpec {
            name: "t".into(),
            region: "ap-guangzhou".into(),
            kind: if cvm.is_some() {
                TaskKind::Cvm
            } else {
                TaskKind::PublicNetwork
            },
            cvm_id: cvm.map(|c| ferry_core::CvmId::parse("c", &format!("ins-{c:08}")).unwrap()),
            mongo_host: "127.0.0.1".into(),
            port: 27017,
            username: String::new(),
            password: Secret::default(),
            destination_instance_id: InstanceId::parse("d", "cmgo-6wk2mxa1").unwrap(),
            databases: vec![],
            require_verification: false,
            tenant: "default".into(),
        };
        let mut t = Task::new(TaskId::generate(), spec, 0);
        t.agent_id = agent;
        if active {
            t.state = TaskState::Running;
        }
        t
    }

    proptest! {
        /// The pick is always eligible; a CVM task only ever goes to its CVM's agent; a public task goes to a pool
        /// agent with the least load.
        #[test]
        fn pick_is_eligible_and_least_loaded(
            agents in proptest::collection::vec((proptest::option::of(0usize..4), any::<bool>()), 0..6),
            busy in proptest::collection::vec((0usize..6, any::<bool>()), 0..10),
            cvm in proptest::option::of(0usize..4),
        ) {
            let agents: Vec<AgentRecord> =
                agents.iter().enumerate().map(|(n, (c, pool))| agent(n, *c, *pool)).collect();
            let tasks: Vec<Task> = busy
                .iter()
                .filter(|(n, _)| *n < agents.len())
                .map(|(n, active)| task(None, Some(agents[*n].agent_id.clone()), *active))
                .collect();
            let t = task(cvm, None, false);
            let load = |a: &AgentId| {
                tasks.iter().filter(|x| x.state.is_active() && x.agent_id.as_ref() == Some(a)).count()
            };
            match pick(&t, &agents, &tasks) {
                None => prop_assert!(agents.iter().all(|a| !eligible(&t, a))),
                Some(chosen) => {
                    let chosen = agents.iter().find(|a| a.agent_id == chosen).unwrap();
                    prop_assert!(eligible(&t, chosen));
                    for other in agents.iter().filter(|a| eligible(&t, a)) {
                        prop_assert!(load(&chosen.agent_id) <= load(&other.agent_id));
                    }
                }
            }
        }
    }
}
