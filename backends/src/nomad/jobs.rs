//! Nomad job JSON for environments and runners, built in Rust from Poseidon's default template
//! (`reference/poseidon.md` §5.1–5.3, `reference/nomad-api.md` §3.7), and the claim ledger.
//!
//! - An environment is the job `template-<id>`; a runner is the job `<envId>-<uuid>` derived
//!   from the same template. Both have the groups `default-group` (the container, `sleep
//!   infinity`) and `config` (count 0, never allocated; it carries meta).
//! - **Claim marks live in the environment's template job, not in the runner's.** Nomad treats a
//!   change of a task's combined meta (job meta + group meta + task meta) as a destructive update
//!   and replaces the allocation (`tasksUpdated` in Nomad's scheduler compares
//!   `CombinedTaskMeta`), so job-level meta on a runner job would restart a learner's container on
//!   every claim. Poseidon therefore writes its `used` flag into the runner's `config` group
//!   (count 0), which does not touch `default-group` — but recovering N runners then costs N job
//!   reads, since the job list only returns job-level meta. Trident keeps one *ledger* per
//!   environment instead: the `config` group meta of `template-<id>` maps `claim.<uuid>` to the
//!   mark. Recovery reads one job list plus one template job per environment — O(environments),
//!   not O(runners) — and a claim is one template re-register, which the backend can batch.
//!
//! Architecture invariant: this module is pure (no I/O, no clock, no randomness); it builds and
//! reads JSON values and nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};
use trident_core::{ClaimMark, EnvironmentId, EnvironmentSpec, Lease, RunnerId, RunnerMark, Uuid};

/// Job id prefix of environments.
pub const TEMPLATE_PREFIX: &str = "template-";
/// The container's task group.
pub const DEFAULT_GROUP: &str = "default-group";
/// The container's task.
pub const DEFAULT_TASK: &str = "default-task";
/// The count-0 group that carries meta.
pub const CONFIG_GROUP: &str = "config";
/// Ledger keys in the template's `config` group meta: `claim.<uuid>`.
const CLAIM_KEY_PREFIX: &str = "claim.";
/// The pool size in the template's `config` group meta (Poseidon's key).
const POOL_SIZE_KEY: &str = "prewarmingPoolSize";
/// The environment's CPU limit as given, in the template's `config` group meta: the task's
/// `Resources.CPU` must be at least 1 MHz, so a limit of 0 ("none") could not be read back from
/// it.
const CPU_LIMIT_KEY: &str = "cpuLimit";

/// What an operator configures for the jobs Trident submits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSettings {
    /// Datacenters to place runners in.
    pub datacenters: Vec<String>,
    /// The network mode of runners with network access (Poseidon: `bridge`; production often
    /// `cni/secure-bridge`).
    pub network_mode: String,
    /// Never force an image pull (Poseidon's `nomad.disableforcepull`).
    pub disable_force_pull: bool,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            datacenters: vec!["dc1".to_owned()],
            network_mode: "bridge".to_owned(),
            disable_force_pull: false,
        }
    }
}

/// Why a job could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job id is not `template-<id>`.
    #[error("job {0:?} is not an environment template")]
    NotATemplate(String),
    /// A field is missing or has the wrong type.
    #[error("job {job:?}: {problem}")]
    Malformed {
        /// The job id.
        job: String,
        /// What is wrong.
        problem: String,
    },
}

/// The job id of an environment.
pub fn template_job_id(environment: EnvironmentId) -> String {
    format!("{TEMPLATE_PREFIX}{environment}")
}

/// The environment a template job id names, if it is one.
pub fn environment_of_template(job_id: &str) -> Option<EnvironmentId> {
    job_id.strip_prefix(TEMPLATE_PREFIX)?.parse().ok()
}

/// The environment's template job, with its claim ledger.
pub fn template_job(
    settings: &JobSettings,
    environment: EnvironmentId,
    spec: &EnvironmentSpec,
    ledger: &BTreeMap<Uuid, RunnerMark>,
) -> Value {
    let mut meta = ledger_meta(ledger);
    meta.insert(
        POOL_SIZE_KEY.to_owned(),
        Value::String(spec.prewarming_pool_size.to_string()),
    );
    meta.insert(
        CPU_LIMIT_KEY.to_owned(),
        Value::String(spec.cpu_limit.to_string()),
    );
    job(
        settings,
        &template_job_id(environment),
        spec,
        !settings.disable_force_pull,
        meta,
    )
}

/// A runner's job. `force_pull` as Poseidon: true when filling the pool, false for the
/// replacement started right after a claim (latency matters more than freshness there).
pub fn runner_job(
    settings: &JobSettings,
    runner: RunnerId,
    spec: &EnvironmentSpec,
    force_pull: bool,
) -> Value {
    let mut meta = Map::new();
    // Poseidon's key, kept so that a Poseidon reading the cluster sees a consistent picture.
    meta.insert("used".to_owned(), Value::String("false".to_owned()));
    job(
        settings,
        &runner.to_string(),
        spec,
        force_pull && !settings.disable_force_pull,
        meta,
    )
}

fn job(
    settings: &JobSettings,
    id: &str,
    spec: &EnvironmentSpec,
    force_pull: bool,
    config_meta: Map<String, Value>,
) -> Value {
    let network_mode = if spec.network_access { "" } else { "none" };
    let networks = if spec.network_access {
        let ports: Vec<Value> = spec
            .exposed_ports
            .iter()
            .map(|port| json!({"Label": port.to_string(), "To": port}))
            .collect();
        json!([{"Mode": settings.network_mode, "DynamicPorts": ports}])
    } else {
        json!([])
    };
    json!({
        "ID": id,
        "Name": id,
        "Type": "batch",
        "Datacenters": settings.datacenters,
        "TaskGroups": [
            {
                "Name": DEFAULT_GROUP,
                "Count": 1,
                "EphemeralDisk": {"Sticky": false, "SizeMB": 10, "Migrate": false},
                "Spreads": [{"Attribute": "${node.unique.name}", "Weight": 100}],
                "RestartPolicy": {
                    "Attempts": 3, "Interval": 3_600_000_000_000_u64, "Delay": 15_000_000_000_u64,
                    "Mode": "fail", "RenderTemplates": false
                },
                "ReschedulePolicy": {
                    "Attempts": 3, "Interval": 21_600_000_000_000_u64, "Delay": 60_000_000_000_u64,
                    "DelayFunction": "exponential", "MaxDelay": 240_000_000_000_u64,
                    "Unlimited": false
                },
                "Networks": networks,
                "Tasks": [{
                    "Name": DEFAULT_TASK,
                    "Driver": "docker",
                    "Config": {
                        "image": spec.image,
                        "command": "sleep",
                        "args": ["infinity"],
                        "network_mode": network_mode,
                        "force_pull": force_pull,
                    },
                    // Poseidon's template reserves 40 MHz and 50 MB; the environment's limits
                    // are the CPU share and the memory ceiling (oversubscription).
                    "Resources": {
                        "CPU": spec.cpu_limit.max(1),
                        "MemoryMB": 50,
                        "MemoryMaxMB": memory_max(spec.memory_limit),
                    },
                    "KillTimeout": 0,
                    "KillSignal": "SIGKILL",
                    "LogConfig": {"MaxFiles": 1, "MaxFileSizeMB": 1},
                }],
            },
            {
                "Name": CONFIG_GROUP,
                "Count": 0,
                "Meta": config_meta,
                "Tasks": [{
                    "Name": CONFIG_GROUP,
                    "Driver": "exec",
                    "Config": {"command": "true"},
                    "Resources": {"CPU": 1, "MemoryMB": 10},
                    "LogConfig": {"MaxFiles": 1, "MaxFileSizeMB": 1},
                }],
            },
        ],
    })
}

/// Nomad refuses `MemoryMaxMB` below `MemoryMB` (nomad-api.md §3.7): 0 means "no ceiling".
fn memory_max(memory_limit_mb: u32) -> u32 {
    match memory_limit_mb {
        0 => 0,
        limit => limit.max(50),
    }
}

/// Reads an environment back from its template job (startup recovery, reconciliation).
pub fn parse_template(job: &Value) -> Result<(EnvironmentId, EnvironmentSpec), JobError> {
    let id = job["ID"].as_str().unwrap_or_default();
    let environment =
        environment_of_template(id).ok_or_else(|| JobError::NotATemplate(id.to_owned()))?;
    let malformed = |problem: &str| JobError::Malformed {
        job: id.to_owned(),
        problem: problem.to_owned(),
    };
    let group = group(job, DEFAULT_GROUP).ok_or_else(|| malformed("no default-group"))?;
    let task = group["Tasks"]
        .as_array()
        .and_then(|tasks| tasks.iter().find(|task| task["Name"] == DEFAULT_TASK))
        .ok_or_else(|| malformed("no default-task"))?;
    let image = task["Config"]["image"]
        .as_str()
        .ok_or_else(|| malformed("no image"))?
        .to_owned();
    let number = |value: &Value| value.as_u64().and_then(|n| u32::try_from(n).ok());
    let cpu_limit = config_meta(job)
        .and_then(|meta| meta.get(CPU_LIMIT_KEY))
        .and_then(Value::as_str)
        .and_then(|limit| limit.parse().ok())
        .or_else(|| number(&task["Resources"]["CPU"]))
        .unwrap_or(0);
    let memory_limit = number(&task["Resources"]["MemoryMaxMB"]).unwrap_or(0);
    let networks = group["Networks"].as_array().cloned().unwrap_or_default();
    let network_access = !networks.is_empty();
    let exposed_ports = networks
        .first()
        .and_then(|network| network["DynamicPorts"].as_array())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|port| port["To"].as_u64().and_then(|to| u16::try_from(to).ok()))
                .collect()
        })
        .unwrap_or_default();
    let prewarming_pool_size = config_meta(job)
        .and_then(|meta| meta.get(POOL_SIZE_KEY))
        .and_then(Value::as_str)
        .and_then(|size| size.parse().ok())
        .unwrap_or(0);
    Ok((
        environment,
        EnvironmentSpec {
            prewarming_pool_size,
            cpu_limit,
            memory_limit,
            image,
            network_access,
            exposed_ports,
        },
    ))
}

/// The claim ledger stored in a template job: runner uuid → mark. Entries that do not parse are
/// skipped (a hand-edited job must not stop recovery).
pub fn parse_ledger(job: &Value) -> BTreeMap<Uuid, RunnerMark> {
    let Some(meta) = config_meta(job) else {
        return BTreeMap::new();
    };
    meta.iter()
        .filter_map(|(key, value)| {
            let uuid = key.strip_prefix(CLAIM_KEY_PREFIX)?.parse().ok()?;
            let mark = decode_mark(value.as_str()?)?;
            Some((uuid, mark))
        })
        .collect()
}

fn ledger_meta(ledger: &BTreeMap<Uuid, RunnerMark>) -> Map<String, Value> {
    ledger
        .iter()
        .filter_map(|(uuid, mark)| {
            encode_mark(*mark)
                .map(|text| (format!("{CLAIM_KEY_PREFIX}{uuid}"), Value::String(text)))
        })
        .collect()
}

/// `Idle` is the absence of an entry; `Claimed` is `claimed:<lease>:<timeout seconds or ->`;
/// `Retired` is `retired`. Meta values must be strings.
fn encode_mark(mark: RunnerMark) -> Option<String> {
    match mark {
        RunnerMark::Idle => None,
        RunnerMark::Claimed(claim) => Some(format!(
            "claimed:{}:{}",
            claim.lease,
            claim
                .inactivity_timeout
                .map_or_else(|| "-".to_owned(), |timeout| timeout.as_secs().to_string())
        )),
        RunnerMark::Retired => Some("retired".to_owned()),
    }
}

fn decode_mark(text: &str) -> Option<RunnerMark> {
    if text == "retired" {
        return Some(RunnerMark::Retired);
    }
    let mut parts = text.strip_prefix("claimed:")?.split(':');
    let lease = Lease(parts.next()?.parse().ok()?);
    let inactivity_timeout = match parts.next()? {
        "-" => None,
        seconds => Some(Duration::from_secs(seconds.parse().ok()?)),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(RunnerMark::Claimed(ClaimMark {
        lease,
        inactivity_timeout,
    }))
}

fn group<'a>(job: &'a Value, name: &str) -> Option<&'a Value> {
    job["TaskGroups"]
        .as_array()?
        .iter()
        .find(|group| group["Name"] == name)
}

fn config_meta(job: &Value) -> Option<&Map<String, Value>> {
    group(job, CONFIG_GROUP)?["Meta"].as_object()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(network: bool) -> EnvironmentSpec {
        EnvironmentSpec {
            prewarming_pool_size: 5,
            cpu_limit: 20,
            memory_limit: 256,
            image: "openhpi/co_execenv_python:3.8".into(),
            network_access: network,
            exposed_ports: if network { vec![42, 1337] } else { vec![] },
        }
    }

    fn task(job: &Value) -> &Value {
        &group(job, DEFAULT_GROUP).expect("default-group")["Tasks"][0]
    }

    #[test]
    fn the_environment_maps_to_the_fields_poseidon_uses() {
        let job = template_job(
            &JobSettings::default(),
            EnvironmentId(42),
            &spec(false),
            &BTreeMap::new(),
        );
        assert_eq!(job["ID"], "template-42");
        assert_eq!(job["Type"], "batch");
        assert_eq!(task(&job)["Resources"]["CPU"], 20);
        assert_eq!(task(&job)["Resources"]["MemoryMaxMB"], 256);
        assert_eq!(task(&job)["Resources"]["MemoryMB"], 50);
        assert_eq!(
            task(&job)["Config"]["image"],
            "openhpi/co_execenv_python:3.8"
        );
        assert_eq!(task(&job)["Config"]["network_mode"], "none");
        assert_eq!(
            group(&job, DEFAULT_GROUP).expect("group")["Networks"],
            json!([])
        );
        assert_eq!(group(&job, CONFIG_GROUP).expect("config")["Count"], 0);
        assert_eq!(config_meta(&job).expect("meta")["prewarmingPoolSize"], "5");
    }

    #[test]
    fn network_access_adds_one_dynamic_port_per_exposed_port() {
        let job = runner_job(
            &JobSettings::default(),
            RunnerId::new(EnvironmentId(42), Uuid(7)),
            &spec(true),
            true,
        );
        assert_eq!(job["ID"], "42-00000000-0000-0000-0000-000000000007");
        assert_eq!(task(&job)["Config"]["network_mode"], "");
        let network = &group(&job, DEFAULT_GROUP).expect("group")["Networks"][0];
        assert_eq!(network["Mode"], "bridge");
        assert_eq!(
            network["DynamicPorts"],
            json!([{"Label": "42", "To": 42}, {"Label": "1337", "To": 1337}])
        );
        assert_eq!(config_meta(&job).expect("meta")["used"], "false");
    }

    #[test]
    fn force_pull_follows_the_caller_unless_disabled() {
        let runner = RunnerId::new(EnvironmentId(1), Uuid(1));
        let settings = JobSettings::default();
        assert_eq!(
            task(&runner_job(&settings, runner, &spec(false), true))["Config"]["force_pull"],
            true
        );
        assert_eq!(
            task(&runner_job(&settings, runner, &spec(false), false))["Config"]["force_pull"],
            false
        );
        let disabled = JobSettings {
            disable_force_pull: true,
            ..JobSettings::default()
        };
        assert_eq!(
            task(&runner_job(&disabled, runner, &spec(false), true))["Config"]["force_pull"],
            false
        );
    }

    #[test]
    fn a_template_reads_back_as_the_same_environment() {
        for network in [false, true] {
            let job = template_job(
                &JobSettings::default(),
                EnvironmentId(9),
                &spec(network),
                &BTreeMap::new(),
            );
            assert_eq!(parse_template(&job), Ok((EnvironmentId(9), spec(network))));
        }
    }

    #[test]
    fn a_cpu_limit_of_zero_survives_the_round_trip() {
        let mut unlimited = spec(false);
        unlimited.cpu_limit = 0;
        let job = template_job(
            &JobSettings::default(),
            EnvironmentId(2),
            &unlimited,
            &BTreeMap::new(),
        );
        assert_eq!(
            task(&job)["Resources"]["CPU"],
            1,
            "Nomad needs at least 1 MHz"
        );
        assert_eq!(parse_template(&job), Ok((EnvironmentId(2), unlimited)));
    }

    #[test]
    fn runner_jobs_and_broken_templates_are_refused_with_a_reason() {
        let runner = runner_job(
            &JobSettings::default(),
            RunnerId::new(EnvironmentId(1), Uuid(1)),
            &spec(false),
            true,
        );
        assert!(matches!(
            parse_template(&runner),
            Err(JobError::NotATemplate(_))
        ));
        let broken = json!({"ID": "template-3", "TaskGroups": []});
        assert!(matches!(
            parse_template(&broken),
            Err(JobError::Malformed { .. })
        ));
    }

    #[test]
    fn the_claim_ledger_round_trips_through_the_template() {
        let mut ledger = BTreeMap::new();
        ledger.insert(
            Uuid(1),
            RunnerMark::Claimed(ClaimMark {
                lease: Lease(17),
                inactivity_timeout: Some(Duration::from_secs(60)),
            }),
        );
        ledger.insert(
            Uuid(2),
            RunnerMark::Claimed(ClaimMark {
                lease: Lease(18),
                inactivity_timeout: None,
            }),
        );
        ledger.insert(Uuid(3), RunnerMark::Retired);
        ledger.insert(Uuid(4), RunnerMark::Idle);
        let job = template_job(
            &JobSettings::default(),
            EnvironmentId(5),
            &spec(false),
            &ledger,
        );
        let meta = config_meta(&job).expect("meta");
        assert_eq!(
            meta["claim.00000000-0000-0000-0000-000000000001"],
            "claimed:17:60"
        );
        assert_eq!(
            meta["claim.00000000-0000-0000-0000-000000000002"],
            "claimed:18:-"
        );
        assert!(
            !meta.contains_key("claim.00000000-0000-0000-0000-000000000004"),
            "idle is absence"
        );
        ledger.remove(&Uuid(4));
        assert_eq!(parse_ledger(&job), ledger);
        // The pool size survives next to the ledger.
        assert_eq!(
            parse_template(&job)
                .expect("template")
                .1
                .prewarming_pool_size,
            5
        );
    }

    #[test]
    fn unparsable_ledger_entries_are_skipped() {
        let job = json!({"ID": "template-1", "TaskGroups": [{"Name": "config", "Meta": {
            "claim.nonsense": "claimed:1:-",
            "claim.00000000-0000-0000-0000-000000000001": "claimed:x:-",
            "claim.00000000-0000-0000-0000-000000000002": "claimed:5:10:extra",
            "claim.00000000-0000-0000-0000-000000000003": "claimed:6:-",
        }}]});
        let ledger = parse_ledger(&job);
        assert_eq!(ledger.len(), 1);
        assert!(ledger.contains_key(&Uuid(3)));
    }

    #[test]
    fn a_memory_ceiling_below_the_reservation_is_raised_to_it() {
        assert_eq!(memory_max(0), 0);
        assert_eq!(memory_max(10), 50);
        assert_eq!(memory_max(512), 512);
    }

    #[test]
    fn template_ids_name_environments() {
        assert_eq!(
            environment_of_template("template-12"),
            Some(EnvironmentId(12))
        );
        assert_eq!(environment_of_template("template-x"), None);
        assert_eq!(
            environment_of_template("12-00000000-0000-0000-0000-000000000001"),
            None
        );
    }
}
