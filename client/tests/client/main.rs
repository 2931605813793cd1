//! Integration tests of `silt-client`, one binary: the library and the `silt` CLI against an
//! in-process mock of the broker's gRPC services.

mod cli;
mod library;
mod mock;
