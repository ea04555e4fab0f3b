//! Generated types and service stubs of the `ferry.v1` contract, plus the descriptor set for server reflection.
//!
//! Nothing else lives here: generated types stay at the edges and are converted into validated domain types
//! (`ferry-core`) on receipt.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `ferry.v1`: MigrationService (operator API) and AgentService (agent sessions).
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// Encoded `FileDescriptorSet` of every ferry proto file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));
