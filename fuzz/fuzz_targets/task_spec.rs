//! CreateTask / RegisterInstance / CreateJoinToken requests from arbitrary protobuf bytes through ferry-core's
//! validation (TaskSpec, Instance with its URI allow-list, tenants, public-source addresses). No panic: bad input is
//! an error naming the field.
#![no_main]

use ferry_core::{InstanceInput, Secret, TaskKind, TaskSpec, TaskSpecInput};
use ferry_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = pb::CreateTaskRequest::decode(data) {
        let spec = req.spec.unwrap_or_default();
        let kind = match spec.kind() {
            pb::TaskKind::Cvm => Some(TaskKind::Cvm),
            pb::TaskKind::PublicNetwork => Some(TaskKind::PublicNetwork),
            pb::TaskKind::Unspecified => None,
        };
        let _ = ferry_core::check_public_source_host(&spec.mongo_host);
        let _ = ferry_core::validate_tenant("spec.tenant", &spec.tenant);
        let _ = TaskSpec::try_from(TaskSpecInput {
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
        });
    }
    if let Ok(req) = pb::RegisterInstanceRequest::decode(data) {
        let i = req.instance.unwrap_or_default();
        let _ = ferry_core::Instance::from_input(
            InstanceInput {
                instance_id: i.instance_id,
                region: i.region,
                uri: i.uri,
                username: i.username,
                password: Secret::new(i.password),
                tenant: i.tenant,
            },
            0,
        );
    }
    let _ = ferry_core::net::is_loopback_authority(&String::from_utf8_lossy(data));
});
