//! Progress notifications for long tool calls.
//!
//! When a client sends a `progressToken` with a call, the core's progress events (build
//! steps, lifecycle phases) become `notifications/progress` messages, and a heartbeat is sent
//! after every 5 s without one, so a client that resets its timeout on progress keeps
//! waiting for a long command. The core reports progress through a synchronous callback; a
//! channel carries the messages to a task that sends them, and the call waits for that task
//! to drain before it returns its result, so no notification follows the response.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyro_core::{ProgressEvent, ProgressFn};
use rmcp::RoleServer;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::Peer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Quiet time after which a heartbeat is sent.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Build steps report often; at most one message per step and this interval.
const PULL_INTERVAL: Duration = Duration::from_secs(2);

/// The progress side of one tool call.
pub(crate) struct Progress {
    /// `None` on the channel marks the end of the call.
    tx: Option<mpsc::UnboundedSender<Option<String>>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts forwarding when the client asked for progress; otherwise does nothing.
    pub(crate) fn start(tool: &str, token: Option<ProgressToken>, peer: Peer<RoleServer>) -> Self {
        let Some(token) = token else {
            return Self {
                tx: None,
                task: None,
            };
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<String>>();
        let tool = tool.to_string();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0.0;
            loop {
                let message = tokio::select! {
                    m = rx.recv() => match m {
                        Some(Some(m)) => m,
                        Some(None) | None => break,
                    },
                    _ = tokio::time::sleep(HEARTBEAT) => {
                        format!("{tool}: still running ({} s)", started.elapsed().as_secs())
                    }
                };
                n += 1.0;
                let param = ProgressNotificationParam::new(token.clone(), n).with_message(message);
                if peer.notify_progress(param).await.is_err() {
                    // The client is gone; keep draining so senders never block.
                    tracing::debug!("progress notification not delivered");
                }
            }
        });
        Self {
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// A sink for the core's events (drops everything when no progress was asked for).
    pub(crate) fn sink(&self) -> ProgressFn {
        let Some(tx) = self.tx.clone() else {
            return pyro_core::no_progress();
        };
        let last_pull: Mutex<(&'static str, Option<Instant>)> = Mutex::new(("", None));
        let last_service: Mutex<Option<Instant>> = Mutex::new(None);
        Arc::new(move |ev: &ProgressEvent| {
            let msg = match ev {
                ProgressEvent::Pull(p) => {
                    let mut last = last_pull.lock().unwrap_or_else(|e| e.into_inner());
                    let recent = last.1.is_some_and(|t| t.elapsed() < PULL_INTERVAL);
                    if last.0 == p.phase && recent {
                        return;
                    }
                    *last = (p.phase, Some(Instant::now()));
                    let line = p.message.lines().next().unwrap_or("");
                    let line: String = line.chars().take(120).collect();
                    // A pull of an installed environment reports its steps as cached:
                    // nothing is built then, so the message does not say so.
                    format!(
                        "environment: step {}/{} {} ({:.0} s) {}",
                        p.step,
                        p.total,
                        p.phase,
                        p.elapsed.as_secs_f64(),
                        line
                    )
                }
                ProgressEvent::Provision(m) => format!("firecracker: {m}"),
                ProgressEvent::Snapshot(m) => format!("snapshot: {m}"),
                ProgressEvent::Service {
                    name,
                    elapsed_ms,
                    probe_attempts,
                    last_probe_error,
                } => {
                    // The agent reports every probe; a client needs to hear now and then.
                    let mut last = last_service.lock().unwrap_or_else(|e| e.into_inner());
                    if last.is_some_and(|t| t.elapsed() < PULL_INTERVAL) {
                        return;
                    }
                    *last = Some(Instant::now());
                    format!(
                        "{name}: waiting for readiness ({} s, {probe_attempts} probes{})",
                        elapsed_ms / 1000,
                        last_probe_error
                            .as_deref()
                            .map(|e| format!("; last: {e}"))
                            .unwrap_or_default()
                    )
                }
                ProgressEvent::Phase { phase, vm_id } => match vm_id {
                    Some(id) => format!("phase {phase} (vm {id})"),
                    None => format!("phase {phase}"),
                },
            };
            let _ = tx.send(Some(msg.trim_end().to_string()));
        })
    }

    /// Sends one message (nothing happens when no progress was asked for).
    pub(crate) fn note(&self, message: impl Into<String>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Some(message.into()));
        }
    }

    /// Stops the heartbeat and waits (briefly) for queued notifications to go out.
    pub(crate) async fn finish(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None);
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
