//! The Nomad backend. For now its pure part: the wire types the tracker reads ([`model`]) and the
//! allocation tracker ([`tracker`]) that turns Nomad's event stream into runner observations.
//! The HTTP client, the event-stream reader and the `Executor` come with their issue.
//!
//! Architecture invariant: `model` and `tracker` do no I/O, have no async, read no clock, draw no
//! randomness and iterate only ordered collections, so the simulation drives them unchanged.

pub mod model;
pub mod tracker;
