//! Running one call on a thread of its own.

use tokio::sync::watch;

/// Runs the future `start` makes on a thread of the runtime's blocking pool, so that whatever
/// it does between two awaits (the core does synchronous file and SQLite work inside its
/// async calls) only ever holds up that thread, never the runtime's workers or another
/// request; its timers and I/O are still driven by the runtime. The future is made and polled
/// on that thread, so it need not be `Send`. `Ok(None)` when `cancelled` turned true first
/// (the future is dropped at its next await; a sender that goes away cancels nothing);
/// `Err` when the thread panicked. Both servers (`pyro rpc`, `pyro mcp serve`) run each
/// call this way.
pub async fn on_own_thread<T, F, Fut>(
    cancelled: Option<watch::Receiver<bool>>,
    start: F,
) -> Result<Option<T>, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        rt.block_on(async move {
            let cancel = async {
                let cancelled_now = match cancelled {
                    Some(mut c) => c.wait_for(|c| *c).await.is_ok(),
                    None => false,
                };
                // A sender that went away without cancelling cancels nothing.
                if !cancelled_now {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = start() => Some(r),
                () = cancel => None,
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn cancelling_abandons_a_request_and_a_gone_sender_does_not() {
        let (cancel, cancelled) = watch::channel(false);
        let stuck = tokio::spawn(on_own_thread(Some(cancelled.clone()), || {
            std::future::pending::<()>()
        }));
        cancel.send(true).unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), stuck).await;
        assert_eq!(r.unwrap().unwrap().unwrap(), None);
        let (cancel, cancelled) = watch::channel(false);
        drop(cancel);
        let r = on_own_thread(Some(cancelled), || async { 7 })
            .await
            .unwrap();
        assert_eq!(r, Some(7));
        // A panic is reported as such (serve turns it into -32603).
        let (_cancel, cancelled) = watch::channel(false);
        let e = on_own_thread(Some(cancelled), || async { panic!("boom") })
            .await
            .map(|_: Option<()>| ())
            .unwrap_err();
        assert!(e.is_panic());
    }
}
