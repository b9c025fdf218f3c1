//! The simulator: a fake SSM API, the message-gateway websocket and an agent emulator that dials
//! real local TCP services or runs a shell on a real pty, with seeded fault injection. Used by
//! the tests (in-process, through [`Sim::start`]) and by `ssm-proxy sim`.
//!
//! It shares only the frame codec and payload types with the client: the agent model is written
//! separately from protocol.md §12 so the two sides cannot agree on a misreading.

pub mod agent;
pub mod api;
pub mod config;
pub mod documents;
pub mod ecs;
pub mod error;
pub mod faults;
pub mod fleet;
pub mod frames;
pub mod gateway;
pub mod kms;
pub mod limit;
pub mod pair;
pub mod rng;
pub mod service;
pub mod shell;
pub mod sigv4;
pub mod target;
pub mod throttle;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::{ACCESS_KEY, AGENT_VERSION, SECRET_KEY, SimConfig};
pub use ecs::SimTask;
pub use faults::{DropPlan, FaultPlan, PausePlan};
pub use fleet::SimInstance;
pub use service::{Service, SimStats};
pub use throttle::ApiLimit;

/// A running simulator bound to loopback.
pub struct SimServer {
    service: Arc<Service>,
    api: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Binds the API and gateway on `ip` (ephemeral ports) and starts serving.
    pub async fn bind(config: SimConfig, ip: IpAddr, api_port: u16) -> std::io::Result<Self> {
        let api_listener = TcpListener::bind((ip, api_port)).await?;
        let ws_listener = TcpListener::bind((ip, 0)).await?;
        let api = api_listener.local_addr()?;
        let ws = ws_listener.local_addr()?;
        let service = Arc::new(Service::new(
            config,
            format!("ws://{ws}"),
            gateway::spawn_session,
        ));
        let tasks = vec![
            tokio::spawn(api::serve(api_listener, service.clone())),
            tokio::spawn(gateway::serve(ws_listener, service.clone())),
        ];
        Ok(Self {
            service,
            api,
            tasks,
        })
    }

    /// `http://ip:port` of the API.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The service state.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Environment a client needs to use this simulator with the real AWS SDK.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL_SSM", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            (
                "AWS_SECRET_ACCESS_KEY",
                self.service.config().secret.clone(),
            ),
            ("AWS_REGION", sigv4::REGION.into()),
            // AWS CLI v1 reads only this one.
            ("AWS_DEFAULT_REGION", sigv4::REGION.into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT", self.endpoint()),
            ("AWS_ENDPOINT_URL_STS", self.endpoint()),
            ("AWS_ENDPOINT_URL_KMS", self.endpoint()),
            // Its own path: SSM calls sent there are refused, as the real ECS endpoint would.
            (
                "AWS_ENDPOINT_URL_ECS",
                format!("{}{}", self.endpoint(), api::ECS_PATH),
            ),
            (
                "SSM_PROXY_SSMMESSAGES_ENDPOINT",
                self.service.ws_base().to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A simulator on its own runtime thread, for synchronous tests. Stops when dropped.
pub struct Sim {
    server: Option<SimServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sim {
    /// Starts a simulator on 127.0.0.1 with ephemeral ports.
    pub fn start(config: SimConfig) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let server = SimServer::bind(config, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await;
                let ok = server.is_ok();
                let _ = ready_tx.send(server);
                if ok {
                    let _ = stop_rx.await;
                }
            });
        });
        let server = ready_rx.recv()??;
        Ok(Self {
            server: Some(server),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn server(&self) -> &SimServer {
        // Present from start() until drop.
        self.server.as_ref().expect("simulator running")
    }

    /// Environment for clients (see [`SimServer::env`]).
    pub fn env(&self) -> Vec<(String, String)> {
        self.server().env()
    }

    /// API endpoint URL.
    pub fn endpoint(&self) -> String {
        self.server().endpoint()
    }

    /// Sessions started and not yet over.
    pub fn active_sessions(&self) -> usize {
        self.server().service().active_sessions()
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.server().service().stats()
    }

    /// The service state (fleet, EC2 Instance Connect keys, …).
    pub fn service(&self) -> &Arc<Service> {
        self.server().service()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop(self.server.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
