//! The Silt broker. A record's path through this crate:
//!
//! 1. [`service`] — the gRPC edge (`silt.v1.Log`, `silt.v1.Admin`) turns requests into calls;
//! 2. [`produce`] — limits, batch validation, routing (Kafka's murmur2, see [`topics`]);
//! 3. [`wal_cache`] — batches wait in memory for their window to flush; producers hold a
//!    [`wal_cache::DurableTicket`];
//! 4. [`flusher`] — one segment object per window, uploaded, then committed in metadata in
//!    order; only then the tickets resolve and [`log_index`] makes the records readable;
//! 5. [`fetch`] — reads byte ranges of committed segments through the read cache.
//!
//! Around it: [`forward`] sends a produce for a partition owned elsewhere to its owner (one
//! hop); [`cluster`] follows one metadata watch — every broker's commits, members, owners, the
//! controller, writer fences; [`controller`] (elected) assigns partitions with
//! [`assignment`]'s balanced, sticky plan; [`membership`] keeps the broker registered under a
//! lease; [`housekeeping`] runs retention and garbage collection; [`server`] wires it all
//! together and owns start-up and the shutdown order.

pub mod assignment;
pub mod cluster;
pub mod controller;
pub mod error;
pub mod fetch;
pub mod flusher;
pub mod forward;
pub mod housekeeping;
pub mod log_index;
pub mod membership;
pub mod produce;
pub mod server;
pub mod service;
pub mod settings;
pub mod stats;
pub mod status;
pub mod topics;
pub mod wal_cache;

pub use error::BrokerError;
pub use server::{Broker, BrokerHandle};
pub use settings::{Cli, Settings};
