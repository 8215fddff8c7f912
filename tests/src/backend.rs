//! Which backend a black-box test's server runs on, so that one test body can run on both.

use trident_sim::nomad::FakeNomadConfig;

use crate::{ServedNomad, Server};

/// The backend of a [`Server`] started by [`Backend::start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded local backend (sandboxes on this host).
    Local,
    /// `--backend nomad` against a fresh fake Nomad of `trident-sim` served over TCP.
    Nomad,
}

impl Backend {
    /// Starts the `trident` binary on this backend with `extra` flags.
    pub async fn start(self, extra: &[&str]) -> OnBackend {
        match self {
            Backend::Local => OnBackend {
                server: Server::start(extra).await,
                _nomad: None,
            },
            Backend::Nomad => {
                let nomad = ServedNomad::start(FakeNomadConfig::default()).await;
                let mut args = vec!["--backend", "nomad", "--nomad-address", &nomad.address];
                args.extend_from_slice(extra);
                OnBackend {
                    server: Server::start(&args).await,
                    _nomad: Some(nomad),
                }
            }
        }
    }

    /// Starts a server with one environment (id 1, pool 1, `memory_mb`) and claims its runner.
    pub async fn with_runner(self, memory_mb: u32) -> (OnBackend, String) {
        let server = self.start(&[]).await;
        server.environment(1, 1, memory_mb).await;
        let runner = server.claim(1, 0).await;
        (server, runner)
    }

    /// The end of a line a command prints, as its client receives it: the local backend's
    /// stdout is a pseudo-terminal, which turns `\n` into `\r\n` (as Poseidon's containers do);
    /// the fake Nomad runs commands without one.
    pub fn newline(self) -> &'static str {
        match self {
            Backend::Local => "\r\n",
            Backend::Nomad => "\n",
        }
    }
}

/// A [`Server`] on a [`Backend`] (dereferences to it), with the fake Nomad it talks to, if any.
/// Fields drop in order: the server is stopped while the fake still serves its last calls.
#[derive(Debug)]
pub struct OnBackend {
    server: Server,
    _nomad: Option<ServedNomad>,
}

impl std::ops::Deref for OnBackend {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for OnBackend {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}
