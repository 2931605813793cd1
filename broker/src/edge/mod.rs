//! The protocol edges: each decodes its protocol's requests, calls the protocol-neutral
//! [`crate::core::Broker`], and encodes the answers, mapping the core's error kinds onto its
//! protocol's statuses in one file. gRPC (`silt.v1`) today; the Kafka wire protocol
//! (`edge/kafka`) and a Kinesis-compatible HTTP API (`edge/kinesis`) will sit beside it.

pub mod grpc;
