//! A fixed set of objects (each a detector, aligner and embedder: ONNX Runtime sessions run
//! mutably) lent to one blocking task at a time.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// Why a pooled job did not return.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The job panicked; its object is lost with it.
    #[error("the request's worker failed: {0}")]
    Failed(String),
    /// The pool is closed (the service is stopping) or lost every object.
    #[error("the service is stopping")]
    Closed,
}

/// Objects lent to blocking jobs; a job waits (asynchronously) for a free one. The blocking
/// job itself puts its object back, so a request whose client goes away mid-job (its future
/// dropped) loses nothing.
pub struct Pool<T> {
    items: Arc<Mutex<Vec<T>>>,
    free: Arc<Semaphore>,
}

impl<T: Send + 'static> Pool<T> {
    /// A pool of `items`.
    pub fn new(items: Vec<T>) -> Self {
        Self {
            free: Arc::new(Semaphore::new(items.len())),
            items: Arc::new(Mutex::new(items)),
        }
    }

    /// How many objects the pool holds now (fewer than it started with only after a panic).
    pub fn size(&self) -> usize {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs `job` on a blocking thread with a free object, and puts the object back.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R, PoolError> {
        let permit = Arc::clone(&self.free)
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Closed)?;
        let items = Arc::clone(&self.items);
        let mut item = items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or(PoolError::Closed)?;
        tokio::task::spawn_blocking(move || {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut item))) {
                Ok(result) => {
                    items.lock().unwrap_or_else(|p| p.into_inner()).push(item);
                    drop(permit);
                    Ok(result)
                }
                Err(panic) => {
                    // The object may be half-changed: it is dropped, and one permit fewer
                    // remains so no job waits for it.
                    permit.forget();
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    Err(PoolError::Failed(what))
                }
            }
        })
        .await
        .map_err(|e| PoolError::Failed(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_share_the_objects_and_a_panicking_job_loses_only_its_own() {
        let pool = std::sync::Arc::new(Pool::new(vec![0u32, 0u32]));
        let jobs: Vec<_> = (0..20)
            .map(|_| {
                let pool = std::sync::Arc::clone(&pool);
                tokio::spawn(async move { pool.run(|n| *n += 1).await })
            })
            .collect();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        let total: u32 = pool.items.lock().unwrap().iter().sum();
        assert_eq!(total, 20);
        let failed = pool.run(|_| panic!("boom")).await;
        assert!(matches!(failed, Err(PoolError::Failed(_))));
        assert_eq!(pool.size(), 1);
        assert!(pool.run(|n| *n).await.unwrap() <= 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_whose_caller_goes_away_still_returns_its_object() {
        let pool = std::sync::Arc::new(Pool::new(vec![0u32]));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let caller = {
            let pool = std::sync::Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(move |n| {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    *n += 1;
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        caller.abort();
        assert_eq!(pool.run(|n| *n).await.unwrap(), 1);
        assert_eq!(pool.size(), 1);
    }
}
