//! The daemon's HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/status`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// What the endpoints read. Flags are set by the scheduler.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// Set once the store's lock is held and the store open (the daemon may wait for
    /// another process to release it; the endpoints answer meanwhile).
    pub store: std::sync::OnceLock<Arc<Store>>,
    /// First load and first reconcile pass done.
    pub first_pass_done: AtomicBool,
    /// Accounts whose key was refused (401/402/403), or could not be read, and has not
    /// worked since, with why.
    pub unauthorized: Mutex<std::collections::BTreeMap<String, String>>,
    /// Why the state store cannot be written now (disk full, deleted or replaced file).
    pub store_fault: Mutex<Option<String>>,
    /// Why there is nothing to enforce (the manifests path is missing or holds no manifest).
    pub manifests_fault: Mutex<Option<String>>,
    /// Accounts whose webhook secret could not be read (their route answers 503).
    pub webhook_fault: Option<String>,
    /// Each account's pacing wait so far.
    pub pacer_waited: Box<dyn Fn() -> Vec<(String, std::time::Duration)> + Send + Sync>,
    /// `/status` shows contact addresses (the endpoint is unauthenticated).
    pub expose_contacts: bool,
}

impl Shared {
    /// Records that `account`'s key was refused (`Some(why)`) or works again (`None`).
    pub fn set_unauthorized(&self, account: &crate::contact::AccountName, why: Option<&str>) {
        let mut refused = self.unauthorized.lock().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(why) => {
                refused.insert(account.to_string(), why.to_string());
            }
            None => {
                refused.remove(account.as_str());
            }
        }
    }

    pub fn store_fault(&self) -> Option<String> {
        self.store_fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_store_fault(&self, fault: Option<String>) {
        *self.store_fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    pub fn manifests_fault(&self) -> Option<String> {
        self.manifests_fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_manifests_fault(&self, fault: Option<String>) {
        *self
            .manifests_fault
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// Why the daemon cannot do its work now, if it cannot. Only process faults count: a
    /// failing policy shows in `/status`, and restarting the process would not fix it.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(f) = self.manifests_fault() {
            return Some(f);
        }
        if let Some(f) = self.store_fault() {
            return Some(f);
        }
        if let Some(f) = &self.webhook_fault {
            return Some(f.clone());
        }
        if self.store.get().is_none() {
            return Some("waiting for the state store: another listwarden holds its lock".into());
        }
        {
            // A refused key never looks green, even when other accounts converge.
            let refused = self.unauthorized.lock().unwrap_or_else(|p| p.into_inner());
            let names: Vec<&str> = refused.keys().map(String::as_str).collect();
            match names.as_slice() {
                [] => {}
                [only] if *only == crate::contact::AccountName::DEFAULT => {
                    return Some("AutoSend refused the API key".into());
                }
                _ => {
                    return Some(format!(
                        "the API key of account {} was refused by AutoSend or cannot be read",
                        names.join(", ")
                    ));
                }
            }
        }
        if !self.first_pass_done.load(Ordering::Relaxed) {
            return Some("first reconcile pass not done".into());
        }
        None
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    match s.not_ready() {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        None => (StatusCode::OK, "ready\n".to_string()),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    for (account, waited) in (s.pacer_waited)() {
        s.metrics.set_pacing_wait(&account, waited);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn status(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let Some(store) = s.store.get().cloned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            "waiting for the state store: another listwarden holds its lock\n".to_string(),
        );
    };
    let show = s.expose_contacts;
    let doc =
        tokio::task::spawn_blocking(move || crate::status::status_document(&store, show)).await;
    match doc {
        Ok(Ok(doc)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        ),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

/// Binds and serves until `stop` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(shared);
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok((local, handle))
}
