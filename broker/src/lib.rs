//! The Silt broker. The tree shows its architecture:
//!
//! - [`edge`] — the protocol edges: each decodes requests, calls the core, encodes answers
//!   (gRPC `silt.v1` today; Kafka and Kinesis next);
//! - [`core`] — the protocol-neutral broker: routing, produce, the WAL cache, the flusher, the
//!   committed index, fetch, topics and administration, behind the [`core::Broker`] facade;
//! - [`cluster`] — the cluster view (one metadata watch), the elected controller and its
//!   balanced, sticky assignment, membership under a lease;
//! - [`housekeeping`] — retention, segment garbage collection, orphan cleanup;
//! - [`runtime`] — assembles a broker from [`Settings`] and injected components, runs its
//!   background loops, and stops it in order;
//! - [`settings`] — flags, `SILT_*` variables and the TOML file.

pub mod cluster;
pub mod core;
pub mod edge;
pub mod failpoint;
pub mod housekeeping;
pub mod observe;
pub mod runtime;
pub mod settings;

pub use runtime::{BrokerHandle, Builder};
pub use settings::{Cli, Settings};
