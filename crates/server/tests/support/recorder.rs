//! A local HTTP server on 127.0.0.1 that records every request, standing
//! in for a forge's API and for notification receivers. It can answer
//! the first requests with 500 to make the sender retry. The tests and
//! the forge benchmark share it, and each uses only part of it.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One received request and the status it was answered with.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub answered: u16,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!("the body is not JSON ({error}): {}", self.text())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Shared {
    requests: Mutex<Vec<Received>>,
    /// How many of the next requests get 500.
    failures_left: AtomicUsize,
    arrived: Notify,
}

pub struct Recorder {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Listens on a free port of 127.0.0.1 and answers the first
    /// `fail_first` requests with 500, every later one with 201.
    pub async fn start(fail_first: usize) -> Self {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            failures_left: AtomicUsize::new(fail_first),
            arrived: Notify::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the recorder");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the recorder runs");
        });
        Self { url, shared, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits up to `timeout` until a request matches `done`, and returns
    /// all requests received by then.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Received) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let received = self.received();
            if received.iter().any(&done) {
                return received;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no request {what} arrived within {timeout:?}; received: \
                 {received:#?}"
            );
            let _ = tokio::time::timeout(left, arrived).await;
        }
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let fail = shared
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::CREATED
    };
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared.requests.lock().unwrap().push(Received {
        method: method.to_string(),
        path: uri.to_string(),
        headers,
        body: body.to_vec(),
        answered: status.as_u16(),
        at,
    });
    shared.arrived.notify_waiters();
    status
}
