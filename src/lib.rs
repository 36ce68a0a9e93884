//! Tandem: a self-hosted bidirectional record sync daemon (Jira Cloud ↔ Salesforce).
//!
//! See `ARCHITECTURE.md` for the data flow, the module map and where each invariant is enforced.

pub mod adf;
pub mod api;
pub mod app;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod dispatch;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod reconcile;
pub mod schedule;
pub mod sim;
pub mod sync;
pub mod telemetry;
