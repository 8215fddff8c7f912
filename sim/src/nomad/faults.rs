//! Fault knobs: every injectable failure of `reference/nomad-api.md` §10 that the fake models,
//! in one enum.
//!
//! A knob is either *persistent* (a flag or value that stays until it is injected again with
//! another value, or [`crate::nomad::FakeNomad::clear_faults`] resets all of them) or *one-shot*
//! (it acts once, at the moment it is injected). Each variant names its §10 row.

use std::time::Duration;

/// One fault to inject into a running [`crate::nomad::FakeNomad`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// §10 row 1, one-shot: every open event stream ends now (EOF, as a server restart or a
    /// leader change looks from v1.11.2 on). Reconnecting works at once.
    DisconnectEventStreams,
    /// §10 row 2, persistent: open event streams send nothing at all, neither frames nor `{}`
    /// heartbeats, while the connection stays open (half-open TCP). Frames written meanwhile stay
    /// buffered and are delivered when the stall ends, unless the buffer overran them.
    StallEventStreams(bool),
    /// §10 row 3, one-shot: the event buffer forgets all but its newest `keep` frames, as a busy
    /// cluster or another server's smaller buffer does. A subscriber that resumes from an
    /// evicted index then starts silently at the oldest kept frame (an index gap); an open
    /// subscriber that had not yet received an evicted frame is cut off (slow consumer, row 26).
    EvictEventBuffer {
        /// How many of the newest frames survive.
        keep: usize,
    },
    /// §10 row 5, persistent: every client-side allocation update (`AllocationUpdated`) is
    /// followed by a second one with the same ClientStatus and DesiredStatus and a new
    /// ModifyIndex (a TaskStates bookkeeping write).
    DuplicateAllocUpdates(bool),
    /// §10 row 6, persistent: the client skips its `pending` update (it batches), so the stream
    /// shows PlanResult pending/run followed directly by AllocationUpdated running/run.
    SkipPendingUpdate(bool),
    /// §10 row 7, persistent: after every client-side allocation update the stream re-delivers
    /// the allocation's *previous* version (its older ModifyIndex) in a new frame, so a consumer
    /// sees e.g. `running/run` after `pending/run` after `running/run`, or `running/stop` after
    /// `complete/stop`. The fake's own state (GET) is not rolled back.
    StaleAllocReplay(bool),
    /// §10 row 8, one-shot: the allocation's node is declared down: an `EvaluationUpdated`
    /// node-update eval, then `PlanResult` with the old allocation `lost/stop` and
    /// `NextAllocation` set, and a replacement under a new id with `PreviousAllocation`, which
    /// then starts normally. Exec on the old allocation fails with close 1008.
    LoseAllocation {
        /// The allocation to lose.
        alloc_id: String,
    },
    /// §10 row 11, persistent: new allocations never start: `Driver Failure` (``Failed to pull
    /// `<image>` ``), `Not Restarting` (unrecoverable), `failed/run`. The eval still completes
    /// without `FailedTGAllocs`.
    ImagePullFailure(bool),
    /// §10 row 10, one-shot: the allocation's container is OOM-killed: `Terminated`
    /// (`oom_killed: "true"`, exit 137), `Restarting`, `Restarts + 1`, `pending/run`, then
    /// `running/run` after the restart delay with a clean file system. Running execs end with
    /// exit code 137.
    OomKill {
        /// The allocation whose container dies.
        alloc_id: String,
    },
    /// §10 row 12, persistent: the scheduler cannot place allocations: the eval completes with
    /// `FailedTGAllocs` and a `BlockedEval`, and a `blocked` eval appears.
    PlacementFailure(bool),
    /// §10 row 25, persistent: a deregistration emits only `JobDeregistered`; the job's
    /// allocations vanish from the state without any allocation event.
    DeregisterWithoutAllocEvents(bool),
    /// §10 rows 16 and 17, persistent until used up: the next `count` HTTP requests (any route,
    /// exec upgrades and event streams included) are answered with `status` and Nomad's text for
    /// it: 429 is the connection limiter's reply with `Connection: close`, 403 is `Permission
    /// denied`, every other status is `No cluster leader`. `count: 0` turns it off.
    HttpErrors {
        /// The status code to answer with.
        status: u16,
        /// How many requests still get it.
        count: u32,
    },
    /// §10 row 20, persistent: each exec waits this long (tokio time) before its command starts,
    /// sending no frames meanwhile. Zero turns it off.
    ExecDelay(Duration),
    /// §10 row 21, persistent: execs end by closing the TCP connection without stdout/stderr
    /// close frames, without the `exited` frame and without a close frame (the client sees 1006).
    ExecDropBeforeExit(bool),
}

/// The persistent knobs currently in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultState {
    pub(crate) stall_event_streams: bool,
    pub(crate) duplicate_alloc_updates: bool,
    pub(crate) skip_pending_update: bool,
    pub(crate) stale_alloc_replay: bool,
    pub(crate) image_pull_failure: bool,
    pub(crate) placement_failure: bool,
    pub(crate) deregister_without_alloc_events: bool,
    pub(crate) http_error_status: u16,
    pub(crate) http_errors_left: u32,
    pub(crate) exec_delay: Duration,
    pub(crate) exec_drop_before_exit: bool,
}

/// Why a fault could not be injected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// The allocation named by the fault does not exist.
    #[error("unknown allocation {0:?}")]
    UnknownAllocation(String),
    /// The allocation exists but is in no state the fault applies to (e.g. already terminal).
    #[error("allocation {alloc_id:?} is {client_status}, the fault needs {needed}")]
    WrongAllocationState {
        /// The allocation.
        alloc_id: String,
        /// Its current client status.
        client_status: String,
        /// The state the fault needs.
        needed: &'static str,
    },
    /// The HTTP status is not one a fault can answer with.
    #[error("status {0} is not an error status (400..=599)")]
    NotAnErrorStatus(u16),
}
