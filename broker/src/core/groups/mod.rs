//! Consumer groups, protocol-neutral: each group's state machine ([`state`]) and the
//! server-side assignor ([`assignor`]).
//!
//! A group is served by one coordinating broker at a time; what makes it one, how its state
//! and committed offsets are stored and fenced, and how the gRPC and Kafka edges drive it is
//! in ARCHITECTURE.md, *Consumer groups*.

pub mod assignor;
pub mod coordinator;
pub mod facade;
pub mod state;

pub use assignor::GroupPartition;
pub use coordinator::{
    Coordinator, GroupDescription, PartitionLag, PartitionOffset, ResetTo, slot_of,
};
pub use facade::{CoordinatorInfo, OffsetChange};
pub use state::{Changed, Group, GroupError, Heartbeat, HeartbeatAnswer};
