//! `trident-sim`'s fake Nomad served over real TCP, for tests that run the Nomad backend (in
//! process or behind a `trident --backend nomad`).

use trident_sim::nomad::{FakeNomad, FakeNomadConfig};

/// The fake Nomad on an ephemeral loopback port, served until this is dropped.
#[derive(Debug)]
pub struct ServedNomad {
    /// The fake itself: faults, request counts, seeding.
    pub nomad: FakeNomad,
    /// `http://127.0.0.1:<port>`, for `--nomad-address` or a `NomadConfig`.
    pub address: String,
    serving: tokio::task::JoinHandle<()>,
}

impl ServedNomad {
    /// Binds an ephemeral port and serves a fresh fake with `config` on it.
    pub async fn start(config: FakeNomadConfig) -> ServedNomad {
        let nomad = FakeNomad::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = format!("http://{}", listener.local_addr().expect("bound"));
        let serving = {
            let nomad = nomad.clone();
            tokio::spawn(async move {
                let _ = nomad.serve(listener).await;
            })
        };
        ServedNomad {
            nomad,
            address,
            serving,
        }
    }

    /// `127.0.0.1:<port>`: the address without its scheme.
    pub fn host_port(&self) -> &str {
        self.address.trim_start_matches("http://")
    }
}

impl Drop for ServedNomad {
    fn drop(&mut self) {
        self.serving.abort();
    }
}
