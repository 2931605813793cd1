//! Silt's wire API: the `silt.v1` protobuf messages and the tonic client and server code
//! generated from `proto/silt/v1/silt.proto`. This crate holds no logic; conversions and
//! validation live at the edges (`silt-broker`'s gRPC layer, `silt-client`).

#![allow(unreachable_pub, clippy::all)]

/// Generated code for package `silt.v1`.
pub mod v1 {
    tonic::include_proto!("silt.v1");

    /// The encoded `FileDescriptorSet` of the Silt protos, served by gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("silt_descriptor");
}
