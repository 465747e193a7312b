//! Helpers shared by the integration tests: a real feed simulator on
//! 127.0.0.1:0 and a real HTTP client.
#![allow(dead_code)]

use ironlake::feedsim::{self, SimOptions};
use std::net::SocketAddr;

/// A simulator serving on a free loopback port until dropped.
pub struct SimServer {
    /// Address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SimServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the simulator in this process on 127.0.0.1:0.
pub async fn start_sim(opts: SimOptions) -> SimServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(feedsim::serve(opts, listener, async move {
        let _ = rx.await;
    }));
    SimServer {
        addr,
        stop: Some(tx),
    }
}

/// A plain HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}
