//! Pushed changes: a filter that is up to date waits on the snapshot feed
//! (`GET /filter/v1/snapshot?since=V&wait=MS` with `If-None-Match: "V"`) and is answered as
//! soon as the snapshot version moves, instead of finding out at its next poll.
//!
//! One watcher per process reads the version for every waiting filter: at once after a
//! write this process served (`poke`, called by a middleware on every successful write),
//! and every `POLL` while anyone waits (writes served by another replica of the same
//! database). Filters woken by the same change ask for the same delta; the first one's
//! read answers them all (`shared_delta`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, Notify};
use tokio::time::Instant;

use crate::store::{SnapshotBody, Store, StoreError};

/// How often the version is read while filters wait, for other replicas' writes.
pub const POLL: Duration = Duration::from_millis(100);
/// The longest a filter may wait for a change.
pub const MAX_WAIT_MS: u64 = 60_000;

/// The snapshot version as last read, and the filters waiting for it to move.
pub struct Changes {
    version: watch::Sender<u64>,
    poke: Notify,
    watching: AtomicBool,
    /// The service is shutting down: nobody waits any more.
    closed: AtomicBool,
    /// The last delta read for woken filters: its `since`, and the answer.
    last_delta: Mutex<Option<(u64, Arc<SnapshotBody>)>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            version: watch::Sender::new(0),
            poke: Notify::new(),
            watching: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_delta: Mutex::new(None),
        }
    }
}

impl Changes {
    /// A write was served: the version is read again at once.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// The service is shutting down: every wait ends now (its filter gets a 304 and asks
    /// again, elsewhere or later), so a graceful shutdown does not wait for them.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.version.send_modify(|_| {});
    }

    /// Waits until the snapshot version is past `version`, or `wait` has passed, or the
    /// service shuts down; answers the version then.
    pub async fn wait_past(self: &Arc<Self>, store: &Store, version: u64, wait: Duration) -> u64 {
        self.watch(store);
        let mut seen = self.version.subscribe();
        // The watcher may be idle (nobody waited): have it read the version now, and
        // poll from now on.
        self.poke();
        let deadline = Instant::now() + wait;
        loop {
            let now = *seen.borrow_and_update();
            if now > version || self.closed.load(Ordering::Acquire) {
                return now;
            }
            match tokio::time::timeout_at(deadline, seen.changed()).await {
                Ok(Ok(())) => continue,
                _ => return *seen.borrow(),
            }
        }
    }

    /// The delta since `since` at `version` or later: read once for all the filters woken
    /// by one change (they wait on each other's read rather than each reading).
    pub async fn shared_delta<F>(
        &self,
        since: u64,
        version: u64,
        read: F,
    ) -> Result<Arc<SnapshotBody>, StoreError>
    where
        F: std::future::Future<Output = Result<SnapshotBody, StoreError>>,
    {
        let mut last = self.last_delta.lock().await;
        if let Some((last_since, body)) = last.as_ref() {
            if *last_since == since && body.version >= version {
                return Ok(Arc::clone(body));
            }
        }
        let body = Arc::new(read.await?);
        *last = Some((since, Arc::clone(&body)));
        Ok(body)
    }

    /// Starts the watcher, once per process.
    fn watch(self: &Arc<Self>, store: &Store) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let (changes, store) = (Arc::clone(self), store.clone());
        tokio::spawn(async move {
            loop {
                if changes.version.receiver_count() == 0 {
                    // Nobody waits: read only after a write, or when a filter comes.
                    changes.poke.notified().await;
                } else {
                    tokio::select! {
                        () = changes.poke.notified() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
                match store.snapshot_version().await {
                    Ok(now) => {
                        changes.version.send_if_modified(|seen| {
                            let moved = now > *seen;
                            *seen = (*seen).max(now);
                            moved
                        });
                    }
                    // Waiting filters are answered 304 at the end of their wait and ask
                    // again; the next read may work.
                    Err(e) => tracing::warn!(error = %e, "reading the snapshot version failed"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let database = crate::store::test_database(dir.path()).await.unwrap();
        (Store::open(&database).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_version_moves_and_not_before() {
        let (store, _dir) = store().await;
        let changes = Arc::new(Changes::default());
        let start = store.snapshot_version().await.unwrap();
        // Nothing changes: the wait runs out and answers the same version.
        let same = changes
            .wait_past(&store, start, Duration::from_millis(300))
            .await;
        assert_eq!(same, start);
        let waiter = {
            let (changes, store) = (Arc::clone(&changes), store.clone());
            tokio::spawn(async move {
                changes
                    .wait_past(&store, start, Duration::from_secs(30))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        let group = crate::store::GroupRow {
            name: "new".into(),
            models: vec!["*".into()],
            ratio: 1.0,
            rpm: None,
            tpm: None,
            account: None,
        };
        store.put_group(&group, 1).await.unwrap();
        changes.poke();
        let moved = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(moved > start);
    }

    #[tokio::test]
    async fn a_shutdown_ends_every_wait() {
        let (store, _dir) = store().await;
        let changes = Arc::new(Changes::default());
        let waiter = {
            let (changes, store) = (Arc::clone(&changes), store.clone());
            tokio::spawn(async move { changes.wait_past(&store, 0, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        changes.close();
        let answered = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(answered.expect("ended").unwrap(), 0);
        // And a wait that starts after does not wait at all.
        let late = tokio::time::timeout(
            Duration::from_secs(5),
            changes.wait_past(&store, 0, Duration::from_secs(60)),
        );
        assert_eq!(late.await.expect("no wait"), 0);
    }
}
