//! Errors of the local backend's sandboxes and executions.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a sandbox could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The host does not allow the namespaces a sandbox needs. Trident never runs commands
    /// unsandboxed instead.
    #[error("this host does not allow the namespaces a sandbox needs (missing: {}): {detail}; fix: {hint}", missing.join(", "))]
    NamespacesUnavailable {
        /// The namespaces that could not be created (`user`, `mount`, `pid`, `net`, `ipc`,
        /// `uts`, `cgroup`).
        missing: Vec<String>,
        /// The kernel's answer.
        detail: String,
        /// How to allow them on this host.
        hint: String,
    },
    /// The host configuration is unusable.
    #[error("invalid local backend configuration: {0}")]
    InvalidConfig(String),
    /// The sandbox id cannot name a directory and a cgroup.
    #[error("invalid sandbox id {0:?}: use 1 to 64 characters of [A-Za-z0-9._-]")]
    InvalidId(String),
    /// A sandbox (or a leftover directory of one) with this id exists.
    #[error("sandbox {0} already exists")]
    AlreadyExists(String),
    /// The requested root file system is not a directory.
    #[error("root file system {0:?} is not a directory")]
    InvalidRootfs(PathBuf),
    /// A cgroup could not be set up.
    #[error("cgroup setup failed at {path:?}: {source}")]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The init reported a failure while setting the sandbox up.
    #[error("sandbox setup failed while trying to {stage}: {message}")]
    Setup {
        /// What the init was doing.
        stage: String,
        /// What went wrong.
        message: String,
    },
    /// The init did not report in time.
    #[error("the sandbox did not start within {0:?}")]
    Timeout(Duration),
    /// A host-side system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the server was doing.
        context: String,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The sandbox's init has exited (destroyed, killed, or crashed).
    #[error("the sandbox is gone")]
    Gone,
}

impl SandboxError {
    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> SandboxError {
        SandboxError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Why an execution could not be started or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `argv` is empty.
    #[error("the command is empty")]
    EmptyCommand,
    /// An argument, a variable name or a value contains a NUL byte, which no C string can hold.
    #[error("the command or its environment contains a NUL byte")]
    NulByte,
    /// An environment variable name is empty or contains `=`.
    #[error("invalid environment variable name {0:?}")]
    InvalidVariable(String),
    /// The command and its environment do not fit in one request to the init.
    #[error("the command and its environment are larger than {limit} bytes")]
    TooLarge {
        /// The bound in bytes.
        limit: usize,
    },
    /// The sandbox refused to start the command: its process limit is reached, or too many
    /// executions are running in it at once.
    #[error("the sandbox could not start the command: {0}")]
    Spawn(String),
    /// This host cannot run the execution as asked.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The sandbox is gone (destroyed or crashed) before the command finished.
    #[error("the sandbox is gone")]
    SandboxGone,
    /// A host-side system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the server was doing.
        context: String,
        /// The kernel's answer.
        source: io::Error,
    },
}

impl ExecError {
    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> ExecError {
        ExecError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}
