//! Silt's metadata: everything a broker knows that is not record data.
//!
//! - [`store`]: the etcd-shaped [`MetaStore`] trait (revisions, ranges, transactions, leases,
//!   watches);
//! - [`embedded`]: [`EmbeddedStore`], the single-node implementation persisted on local disk with
//!   redb;
//! - [`conformance`]: the one test suite every `MetaStore` implementation passes;
//! - [`keys`]: the key layout under `/silt/<cluster>/`, built here and nowhere else;
//! - [`codec`]: versioned value encodings;
//! - [`catalog`]: the typed layer the broker uses (topics, segment commits, log start offsets).

pub mod catalog;
mod clock;
pub mod codec;
pub mod conformance;
mod embedded;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
pub mod keys;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use embedded::EmbeddedStore;
pub use error::{CatalogError, MetaError};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use store::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, MetaStore, Op, OpResponse, RangeRequest,
    RangeResponse, StoreLimits, Txn, TxnResponse, WatchEvent, WatchResponse, WatchStream,
};
