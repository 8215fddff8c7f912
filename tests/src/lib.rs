//! # trident-tests
//!
//! Black-box tests: real HTTP and WebSocket clients against a running `trident` server, the
//! Poseidon end-to-end list (`reference/poseidon.md` §10.2) among them. They arrive with the
//! server issue.
