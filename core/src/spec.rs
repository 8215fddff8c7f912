//! What an execution environment is: Poseidon's environment body, validated.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest prewarming pool an environment may ask for. Poseidon has no bound; production pools
/// are 5 to 30 runners (`reference/poseidon.md` §12), so 1,000 leaves room while stopping a typo
/// from asking the cluster for a million containers.
pub const POOL_SIZE_MAX: u32 = 1_000;
/// The largest CPU limit, in MHz: 1,000 cores at 1 GHz.
pub const CPU_LIMIT_MHZ_MAX: u32 = 1_000_000;
/// The largest memory limit, in MB: 1 TiB.
pub const MEMORY_LIMIT_MB_MAX: u32 = 1_048_576;
/// The longest image name. Docker allows 255 characters per path component and a few components.
pub const IMAGE_LENGTH_MAX: usize = 1_024;
/// The most ports an environment may expose.
pub const EXPOSED_PORTS_MAX: usize = 64;

/// An execution environment as Poseidon's `PUT /execution-environments/{id}` body describes it
/// (the id travels in the path). Field names and order follow Poseidon's JSON.
///
/// Missing fields decode as zero, false or empty, as Go's `encoding/json` does for Poseidon;
/// [`EnvironmentSpec::validate`] then refuses what makes no sense (an empty image, say).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvironmentSpec {
    /// How many idle runners to keep ready.
    pub prewarming_pool_size: u32,
    /// CPU limit in MHz.
    pub cpu_limit: u32,
    /// Memory limit in MB.
    pub memory_limit: u32,
    /// Container image (Nomad), or the name of a configured root file system (local backend).
    pub image: String,
    /// Whether runners may reach the network.
    pub network_access: bool,
    /// Ports a runner exposes; Poseidon sends `null` for none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub exposed_ports: Vec<u16>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u16>, D::Error> {
    Ok(Option::<Vec<u16>>::deserialize(deserializer)?.unwrap_or_default())
}

impl EnvironmentSpec {
    /// Checks the bounds serde cannot express. Poseidon rejects negative numbers and ports above
    /// 65535 at decode time (our unsigned types do the same); Trident also rejects port 0,
    /// duplicate ports, values above the documented maxima, an empty image and control characters.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.prewarming_pool_size > POOL_SIZE_MAX {
            return Err(SpecError::PoolTooLarge(self.prewarming_pool_size));
        }
        if self.cpu_limit > CPU_LIMIT_MHZ_MAX {
            return Err(SpecError::CpuLimitTooLarge(self.cpu_limit));
        }
        if self.memory_limit > MEMORY_LIMIT_MB_MAX {
            return Err(SpecError::MemoryLimitTooLarge(self.memory_limit));
        }
        if self.image.trim().is_empty() {
            return Err(SpecError::EmptyImage);
        }
        if self.image.len() > IMAGE_LENGTH_MAX {
            return Err(SpecError::ImageTooLong(self.image.len()));
        }
        if self.image.chars().any(char::is_control) {
            return Err(SpecError::ImageHasControlCharacters);
        }
        if self.exposed_ports.len() > EXPOSED_PORTS_MAX {
            return Err(SpecError::TooManyPorts(self.exposed_ports.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for &port in &self.exposed_ports {
            if port == 0 {
                return Err(SpecError::PortZero);
            }
            if !seen.insert(port) {
                return Err(SpecError::DuplicatePort(port));
            }
        }
        Ok(())
    }

    /// Whether `other` differs only in its pool size: then the pool is resized, not rolled.
    pub fn same_runners_as(&self, other: &EnvironmentSpec) -> bool {
        self.cpu_limit == other.cpu_limit
            && self.memory_limit == other.memory_limit
            && self.image == other.image
            && self.network_access == other.network_access
            && self.exposed_ports == other.exposed_ports
    }
}

/// Why an environment spec is refused. Each message names the field as the API spells it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The pool is larger than [`POOL_SIZE_MAX`].
    #[error("prewarmingPoolSize {0} is above the maximum of {max}", max = POOL_SIZE_MAX)]
    PoolTooLarge(u32),
    /// The CPU limit is above [`CPU_LIMIT_MHZ_MAX`].
    #[error("cpuLimit {0} MHz is above the maximum of {max} MHz", max = CPU_LIMIT_MHZ_MAX)]
    CpuLimitTooLarge(u32),
    /// The memory limit is above [`MEMORY_LIMIT_MB_MAX`].
    #[error("memoryLimit {0} MB is above the maximum of {max} MB", max = MEMORY_LIMIT_MB_MAX)]
    MemoryLimitTooLarge(u32),
    /// The image is empty or blank.
    #[error("image must not be empty")]
    EmptyImage,
    /// The image name is longer than [`IMAGE_LENGTH_MAX`].
    #[error("image is {0} bytes long, above the maximum of {max}", max = IMAGE_LENGTH_MAX)]
    ImageTooLong(usize),
    /// The image name contains a control character.
    #[error("image must not contain control characters")]
    ImageHasControlCharacters,
    /// More than [`EXPOSED_PORTS_MAX`] ports.
    #[error("exposedPorts lists {0} ports, above the maximum of {max}", max = EXPOSED_PORTS_MAX)]
    TooManyPorts(usize),
    /// Port 0 cannot be exposed.
    #[error("exposedPorts must be in 1..=65535, got 0")]
    PortZero,
    /// A port is listed twice.
    #[error("exposedPorts lists port {0} twice")]
    DuplicatePort(u16),
}

/// Where a runner's exposed port can be reached (Poseidon's `mappedPorts` entry).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MappedPort {
    /// The port inside the runner.
    pub exposed_port: u16,
    /// `host:port` where it is reachable.
    pub host_address: String,
}

impl fmt::Display for MappedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.exposed_port, self.host_address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec {
            prewarming_pool_size: 5,
            cpu_limit: 20,
            memory_limit: 256,
            image: "openhpi/co_execenv_python:3.8".into(),
            network_access: true,
            exposed_ports: vec![80, 8080],
        }
    }

    #[test]
    fn a_typical_spec_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn each_bound_is_enforced_with_its_own_error() {
        type Mutation = fn(&mut EnvironmentSpec);
        let cases: Vec<(Mutation, SpecError)> = vec![
            (
                |s| s.prewarming_pool_size = POOL_SIZE_MAX + 1,
                SpecError::PoolTooLarge(POOL_SIZE_MAX + 1),
            ),
            (
                |s| s.cpu_limit = CPU_LIMIT_MHZ_MAX + 1,
                SpecError::CpuLimitTooLarge(CPU_LIMIT_MHZ_MAX + 1),
            ),
            (
                |s| s.memory_limit = MEMORY_LIMIT_MB_MAX + 1,
                SpecError::MemoryLimitTooLarge(MEMORY_LIMIT_MB_MAX + 1),
            ),
            (|s| s.image = "  ".into(), SpecError::EmptyImage),
            (
                |s| s.image = "a".repeat(IMAGE_LENGTH_MAX + 1),
                SpecError::ImageTooLong(IMAGE_LENGTH_MAX + 1),
            ),
            (
                |s| s.image = "python\n".into(),
                SpecError::ImageHasControlCharacters,
            ),
            (
                |s| s.exposed_ports = (1..=65).collect(),
                SpecError::TooManyPorts(65),
            ),
            (|s| s.exposed_ports = vec![0], SpecError::PortZero),
            (
                |s| s.exposed_ports = vec![80, 443, 80],
                SpecError::DuplicatePort(80),
            ),
        ];
        for (mutate, expected) in cases {
            let mut bad = spec();
            mutate(&mut bad);
            assert_eq!(bad.validate(), Err(expected));
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        let mut edge = spec();
        edge.prewarming_pool_size = POOL_SIZE_MAX;
        edge.cpu_limit = CPU_LIMIT_MHZ_MAX;
        edge.memory_limit = MEMORY_LIMIT_MB_MAX;
        edge.image = "a".repeat(IMAGE_LENGTH_MAX);
        edge.exposed_ports = (1..=64).collect();
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn poseidon_json_decodes_with_null_ports_and_unknown_fields() {
        let json = r#"{"prewarmingPoolSize":1,"cpuLimit":20,"memoryLimit":100,
            "image":"python","networkAccess":false,"exposedPorts":null,"id":3,"extra":true}"#;
        let decoded: EnvironmentSpec = serde_json::from_str(json).expect("Poseidon's shape");
        assert!(decoded.exposed_ports.is_empty());
        assert_eq!(decoded.prewarming_pool_size, 1);
    }

    #[test]
    fn negative_numbers_and_out_of_range_ports_fail_to_decode() {
        let negative = r#"{"prewarmingPoolSize":-1,"cpuLimit":20,"memoryLimit":100,"image":"p","networkAccess":false}"#;
        assert!(serde_json::from_str::<EnvironmentSpec>(negative).is_err());
        let port = r#"{"prewarmingPoolSize":1,"cpuLimit":20,"memoryLimit":100,"image":"p","networkAccess":false,"exposedPorts":[65536]}"#;
        assert!(serde_json::from_str::<EnvironmentSpec>(port).is_err());
    }

    #[test]
    fn only_a_pool_size_change_keeps_the_runners() {
        let mut resized = spec();
        resized.prewarming_pool_size = 9;
        assert!(spec().same_runners_as(&resized));
        let mut reimaged = spec();
        reimaged.image = "other".into();
        assert!(!spec().same_runners_as(&reimaged));
    }
}
