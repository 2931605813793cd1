//! Silt's wire API: the `silt.v1` protobuf messages and the tonic client and server code
//! generated from `proto/silt/v1/silt.proto`, and the [`wire`] contract around them (metadata
//! keys, what a failed call may have done). This crate holds no broker or client logic;
//! conversions and validation live at the edges (`silt-broker`'s gRPC layer, `silt-client`).

pub mod wire;

/// Generated code for package `silt.v1`.
#[allow(unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("silt.v1");

    /// The encoded `FileDescriptorSet` of the Silt protos, served by gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("silt_descriptor");
}
