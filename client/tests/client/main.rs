//! Integration tests of `silt-client`, one binary: the library and the `silt` CLI against an
//! in-process mock of the broker's gRPC services, alone or as a cluster of mock brokers.

mod cli;
mod cluster;
mod library;
mod mock;
