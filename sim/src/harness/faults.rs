//! The fault kinds the simulation injects, and swarm testing: every seed draws its own rate for
//! every kind, from a range that includes zero (TigerBeetle's swarm, `simulation.md` §3.2).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use trident_core::SplitMix64;

/// One kind of fault. The names are what `--faults` takes and what the report counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Trident and Nomad cannot reach each other (both directions) for a while.
    Partition,
    /// Only one direction between Trident and Nomad is cut for a while.
    PartitionOneWay,
    /// Messages between Trident and Nomad are held, then released at once.
    HoldRelease,
    /// The link between Trident and Nomad gets slow for a while.
    Latency,
    /// The Trident process crashes and restarts at once (turmoil `bounce`).
    TridentRestart,
    /// The Trident process crashes and stays down for a while.
    TridentCrash,
    /// Nomad restarts: event streams end, the event buffer is empty afterwards (resume from
    /// the next index: a gap), requests fail with 500 while it is down.
    NomadRestart,
    /// Every event stream ends (EOF), as on a leader change.
    StreamDisconnect,
    /// The event buffer loses old frames and streams end: resuming shows an index gap.
    IndexGap,
    /// Event streams go silent (no frames, no heartbeats) with the connection open.
    StreamStall,
    /// Allocation updates are delivered twice for a while.
    DuplicateEvents,
    /// Older versions of allocations are re-delivered after newer ones for a while.
    StaleEvents,
    /// Clients skip the `pending` update for a while (events arrive batched).
    SkipPending,
    /// A running allocation is lost (node down) and rescheduled under a new id.
    LostAllocation,
    /// New allocations fail to start (image pull failure) for a while.
    ImagePullFailure,
    /// The scheduler cannot place allocations for a while.
    PlacementFailure,
    /// A running allocation's container is OOM-killed and restarts.
    OomKill,
    /// A burst of 429 or 5xx answers from Nomad.
    HttpErrors,
    /// Execs start late for a while.
    SlowExec,
    /// Execs end by dropping the connection, without an exit frame, for a while.
    ExecDrop,
    /// Deregistrations emit only `JobDeregistered`, no allocation events, for a while.
    DeregisterWithoutAllocEvents,
    /// One client cannot reach Trident for a while.
    ClientPartition,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 22] = [
        FaultKind::Partition,
        FaultKind::PartitionOneWay,
        FaultKind::HoldRelease,
        FaultKind::Latency,
        FaultKind::TridentRestart,
        FaultKind::TridentCrash,
        FaultKind::NomadRestart,
        FaultKind::StreamDisconnect,
        FaultKind::IndexGap,
        FaultKind::StreamStall,
        FaultKind::DuplicateEvents,
        FaultKind::StaleEvents,
        FaultKind::SkipPending,
        FaultKind::LostAllocation,
        FaultKind::ImagePullFailure,
        FaultKind::PlacementFailure,
        FaultKind::OomKill,
        FaultKind::HttpErrors,
        FaultKind::SlowExec,
        FaultKind::ExecDrop,
        FaultKind::DeregisterWithoutAllocEvents,
        FaultKind::ClientPartition,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::PartitionOneWay => "partition-one-way",
            FaultKind::HoldRelease => "hold-release",
            FaultKind::Latency => "latency",
            FaultKind::TridentRestart => "trident-restart",
            FaultKind::TridentCrash => "trident-crash",
            FaultKind::NomadRestart => "nomad-restart",
            FaultKind::StreamDisconnect => "stream-disconnect",
            FaultKind::IndexGap => "index-gap",
            FaultKind::StreamStall => "stream-stall",
            FaultKind::DuplicateEvents => "duplicate-events",
            FaultKind::StaleEvents => "stale-events",
            FaultKind::SkipPending => "skip-pending",
            FaultKind::LostAllocation => "lost-allocation",
            FaultKind::ImagePullFailure => "image-pull-failure",
            FaultKind::PlacementFailure => "placement-failure",
            FaultKind::OomKill => "oom-kill",
            FaultKind::HttpErrors => "http-errors",
            FaultKind::SlowExec => "slow-exec",
            FaultKind::ExecDrop => "exec-drop",
            FaultKind::DeregisterWithoutAllocEvents => "deregister-without-alloc-events",
            FaultKind::ClientPartition => "client-partition",
        }
    }

    /// The highest rate a seed may draw for this kind, in fires per simulated hour. Faults that
    /// take the system down for long are rarer than those it should shrug off.
    fn max_per_hour(self) -> f64 {
        match self {
            FaultKind::TridentRestart | FaultKind::TridentCrash | FaultKind::NomadRestart => 30.0,
            FaultKind::Partition
            | FaultKind::PartitionOneWay
            | FaultKind::HoldRelease
            | FaultKind::ImagePullFailure
            | FaultKind::PlacementFailure
            | FaultKind::StreamStall => 40.0,
            _ => 90.0,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
                format!(
                    "unknown fault kind {text:?}; the kinds are: {}",
                    names.join(", ")
                )
            })
    }
}

/// One seed's fault rates: the swarm configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Swarm {
    /// Probability per simulated second, by kind (kinds at 0 never fire).
    pub per_second: BTreeMap<FaultKind, f64>,
}

impl Swarm {
    /// Draws the rates of one seed from `rng`. Of the kinds in `enabled`, about a third get rate
    /// zero; the others a rate up to their maximum. Kinds not enabled are always zero.
    pub fn draw(rng: &mut SplitMix64, enabled: &[FaultKind]) -> Swarm {
        let mut per_second = BTreeMap::new();
        for kind in FaultKind::ALL {
            // Draw for every kind, enabled or not, so that `--faults` does not shift the rates
            // the other kinds get.
            let off = rng.next_u64().is_multiple_of(3);
            let fraction = unit(rng);
            let rate = if off || !enabled.contains(&kind) {
                0.0
            } else {
                fraction * kind.max_per_hour() / 3600.0
            };
            per_second.insert(kind, rate);
        }
        Swarm { per_second }
    }

    /// No faults at all.
    pub fn calm() -> Swarm {
        Swarm {
            per_second: FaultKind::ALL.into_iter().map(|kind| (kind, 0.0)).collect(),
        }
    }

    /// A short stable digest of the rates, for the replay line.
    pub fn digest(&self) -> u64 {
        let mut hash = Fnv::default();
        for (kind, rate) in &self.per_second {
            hash.write(kind.name().as_bytes());
            hash.write(&rate.to_bits().to_le_bytes());
        }
        hash.finish()
    }
}

/// A number in `[0, 1)` from `rng`.
pub fn unit(rng: &mut SplitMix64) -> f64 {
    // 53 random bits, as many as an f64 mantissa holds.
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// FNV-1a, 64 bits: the trace hash. Stable across processes, platforms and Rust releases (unlike
/// `DefaultHasher`).
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse::<FaultKind>(), Ok(kind));
        }
        assert!("no-such-fault".parse::<FaultKind>().is_err());
    }

    #[test]
    fn swarms_differ_by_seed_and_include_zero_rates() {
        let draw = |seed| Swarm::draw(&mut SplitMix64::new(seed), &FaultKind::ALL);
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        let zeros = (0..50)
            .map(draw)
            .filter(|swarm| swarm.per_second.values().any(|rate| *rate == 0.0))
            .count();
        assert!(zeros > 40, "most seeds switch some kind off: {zeros} of 50");
    }

    #[test]
    fn disabled_kinds_never_get_a_rate() {
        let swarm = Swarm::draw(&mut SplitMix64::new(7), &[FaultKind::OomKill]);
        for (kind, rate) in swarm.per_second {
            if kind != FaultKind::OomKill {
                assert_eq!(rate, 0.0, "{kind}");
            }
        }
    }
}
