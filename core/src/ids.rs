//! Identifiers: environments, runners, leases and executions, and the source of fresh ids.
//!
//! Ids that must be unguessable or unique across processes (runner and execution ids) are drawn
//! from an [`IdSource`] the caller injects: the server passes OS randomness, the simulation and
//! the tests a seeded generator. Nothing in this crate draws a random number itself.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An execution environment's id. Poseidon uses a non-negative integer (`{id:[0-9]+}` in its
/// routes, `int` in its JSON bodies).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EnvironmentId(pub u64);

impl fmt::Display for EnvironmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for EnvironmentId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        parse_decimal(text).map(EnvironmentId)
    }
}

/// A 128-bit universally unique id, formatted the usual 8-4-4-4-12 way in lower-case hex.
///
/// Kept here rather than taken from the `uuid` crate because `core` depends on serde and
/// thiserror only; the version bits are the id source's business.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub u128);

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

impl FromStr for Uuid {
    type Err = IdError;

    /// Accepts exactly the hyphenated form (36 characters, hyphens at 8, 13, 18 and 23); hex
    /// digits in either case.
    fn from_str(text: &str) -> Result<Self, IdError> {
        const HYPHENS: [usize; 4] = [8, 13, 18, 23];
        if text.len() != 36 {
            return Err(IdError::MalformedUuid);
        }
        let mut value: u128 = 0;
        for (index, byte) in text.bytes().enumerate() {
            if HYPHENS.contains(&index) {
                if byte != b'-' {
                    return Err(IdError::MalformedUuid);
                }
                continue;
            }
            let digit = (byte as char).to_digit(16).ok_or(IdError::MalformedUuid)?;
            value = (value << 4) | u128::from(digit);
        }
        Ok(Uuid(value))
    }
}

/// A runner's id: `<environment id>-<uuid>`, Poseidon's form, which is also the Nomad job id.
///
/// The environment comes first so that ordering runners by id groups them by environment: the
/// manager finds an environment's runners with one range scan instead of a second index.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunnerId {
    environment: EnvironmentId,
    uuid: Uuid,
}

impl RunnerId {
    /// The runner `uuid` of `environment`.
    pub const fn new(environment: EnvironmentId, uuid: Uuid) -> Self {
        Self { environment, uuid }
    }

    /// The environment the runner belongs to.
    pub const fn environment(&self) -> EnvironmentId {
        self.environment
    }

    /// The runner's own part of the id.
    pub const fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The smallest id of `environment`'s runners, for range scans.
    pub(crate) const fn first_of(environment: EnvironmentId) -> Self {
        Self::new(environment, Uuid(0))
    }

    /// The largest id of `environment`'s runners, for range scans.
    pub(crate) const fn last_of(environment: EnvironmentId) -> Self {
        Self::new(environment, Uuid(u128::MAX))
    }
}

impl fmt::Debug for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.environment, self.uuid)
    }
}

impl FromStr for RunnerId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        // Poseidon takes the environment id from the text before the first '-'.
        let (environment, uuid) = text.split_once('-').ok_or(IdError::MissingSeparator)?;
        Ok(RunnerId::new(environment.parse()?, uuid.parse()?))
    }
}

impl Serialize for RunnerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunnerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The proof of one claim of one runner. The manager issues leases from a counter that never
/// goes back, so a lease is handed out at most once; a runner that comes back clean (after an
/// OOM restart, say) is claimed again under a new lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lease(pub u64);

impl Lease {
    /// Leases a manager takes for issued are below this. The server starts each process's
    /// counter at wall-clock microseconds, which pass 2^63 in the year 294,000: a persisted lease
    /// at or above it was never issued (a ledger edited or corrupted), and a counter lifted at most
    /// to it cannot run out (found by fuzzing: a persisted `u64::MAX` overflowed the counter).
    pub const MAX: Lease = Lease(1 << 63);
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One execution of a command in a claimed runner (Poseidon's `executionID`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExecutionId(pub Uuid);

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for ExecutionId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        text.parse().map(ExecutionId)
    }
}

/// Why a text is not a valid id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// An environment id must be decimal digits that fit in 64 bits.
    #[error("an environment id must be a non-negative decimal integer")]
    MalformedEnvironmentId,
    /// A runner id must be `<environment id>-<uuid>`.
    #[error("a runner id must have the form <environment id>-<uuid>")]
    MissingSeparator,
    /// A uuid must be 32 hex digits in the 8-4-4-4-12 form.
    #[error("a uuid must be 32 hex digits in the form 8-4-4-4-12")]
    MalformedUuid,
}

fn parse_decimal(text: &str) -> Result<u64, IdError> {
    // `u64::from_str` also accepts a leading '+', which Poseidon's `[0-9]+` route pattern does not.
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(IdError::MalformedEnvironmentId);
    }
    text.parse().map_err(|_| IdError::MalformedEnvironmentId)
}

/// Where fresh runner and execution ids come from.
///
/// The manager asks for a uuid whenever it decides to start a runner. Production passes a source
/// backed by the operating system's randomness (ids are capabilities: whoever knows a runner id can
/// use the runner); the simulation and the tests pass a seeded, reproducible one.
pub trait IdSource: Send {
    /// A fresh 128-bit id. It need not be unique: the manager draws again on a collision.
    fn next_uuid(&mut self) -> Uuid;
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, seedable generator in which every seed
/// gives a full-period sequence. It is the one seeded generator of the project: the seeded id
/// source below, the Nomad client's retry jitter in tests, and the fake Nomad all draw from it.
/// Never use it where values must be unguessable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next word of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A reproducible [`IdSource`] for tests, simulations and benchmarks: [`SplitMix64`] over a seed.
/// Never use it where ids must be unguessable.
#[derive(Clone, Debug)]
pub struct SeededIds {
    rng: SplitMix64,
}

impl SeededIds {
    /// A source whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

impl IdSource for SeededIds {
    fn next_uuid(&mut self) -> Uuid {
        let high = u128::from(self.next_u64());
        let low = u128::from(self.next_u64());
        // Stamp version 4 and the RFC 4122 variant so the ids look like what production issues.
        let raw = (high << 64) | low;
        let versioned = (raw & !(0xF << 76)) | (0x4 << 76);
        Uuid((versioned & !(0x3 << 62)) | (0x2 << 62))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_id_round_trips_through_its_text_form() {
        let id = RunnerId::new(
            EnvironmentId(29),
            Uuid(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        );
        let text = id.to_string();
        assert_eq!(text, "29-01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(text.parse::<RunnerId>(), Ok(id));
    }

    #[test]
    fn runner_id_accepts_upper_case_hex_and_formats_lower_case() {
        let id: RunnerId = "7-0123ABCD-89AB-CDEF-0123-456789ABCDEF"
            .parse()
            .expect("valid");
        assert_eq!(id.to_string(), "7-0123abcd-89ab-cdef-0123-456789abcdef");
        assert_eq!(id.environment(), EnvironmentId(7));
    }

    #[test]
    fn malformed_runner_ids_are_rejected_with_the_reason() {
        let cases = [
            ("", IdError::MissingSeparator),
            ("12", IdError::MissingSeparator),
            (
                "-0123abcd-89ab-cdef-0123-456789abcdef",
                IdError::MalformedEnvironmentId,
            ),
            (
                "+1-0123abcd-89ab-cdef-0123-456789abcdef",
                IdError::MalformedEnvironmentId,
            ),
            (
                "x-0123abcd-89ab-cdef-0123-456789abcdef",
                IdError::MalformedEnvironmentId,
            ),
            (
                "99999999999999999999-0123abcd-89ab-cdef-0123-456789abcdef",
                IdError::MalformedEnvironmentId,
            ),
            ("1-0123abcd", IdError::MalformedUuid),
            (
                "1-0123abcd-89ab-cdef-0123-456789abcdeg",
                IdError::MalformedUuid,
            ),
            (
                "1-0123abcd089ab-cdef-0123-456789abcdef",
                IdError::MalformedUuid,
            ),
            (
                "1-0123abcd-89ab-cdef-0123-456789abcdef0",
                IdError::MalformedUuid,
            ),
            (
                "1-0123abcd-89ab-cdef-0123-4567-9abcdef",
                IdError::MalformedUuid,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<RunnerId>(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn runner_ids_order_by_environment_first() {
        let low = RunnerId::new(EnvironmentId(1), Uuid(u128::MAX));
        let high = RunnerId::new(EnvironmentId(2), Uuid(0));
        assert!(low < high);
        assert!(RunnerId::first_of(EnvironmentId(2)) <= high);
        assert!(high <= RunnerId::last_of(EnvironmentId(2)));
    }

    #[test]
    fn runner_id_serializes_as_its_text_form_and_rejects_bad_text() {
        let id = RunnerId::new(EnvironmentId(3), Uuid(1));
        let json = serde_json::to_string(&id).expect("serializable");
        assert_eq!(json, "\"3-00000000-0000-0000-0000-000000000001\"");
        assert_eq!(serde_json::from_str::<RunnerId>(&json).expect("parses"), id);
        assert!(serde_json::from_str::<RunnerId>("\"3-nope\"").is_err());
    }

    #[test]
    fn seeded_ids_are_reproducible_and_versioned() {
        let mut first = SeededIds::new(42);
        let mut second = SeededIds::new(42);
        let a: Vec<Uuid> = (0..4).map(|_| first.next_uuid()).collect();
        let b: Vec<Uuid> = (0..4).map(|_| second.next_uuid()).collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        let text = a[0].to_string();
        assert_eq!(&text[14..15], "4", "version nibble in {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "variant in {text}"
        );
    }
}
