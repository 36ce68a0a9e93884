//! The sync engine's decisions: which flows a change belongs to, what it means for the other
//! side (a create, an update of the fields that changed, nothing because it is our own write
//! coming back, nothing because it is older than what was synced), and how a field changed on
//! both sides is settled.

pub mod batch;
pub mod comments;
pub mod engine;
pub mod mapping;
