//! A fixed set of objects (each a detector, aligner and embedder: ONNX Runtime sessions run
//! mutably) lent to one blocking task at a time.

use std::sync::Mutex;

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

/// Objects lent to blocking jobs; a job waits (asynchronously) for a free one.
pub struct Pool<T> {
    items: Mutex<Vec<T>>,
    free: Semaphore,
}

impl<T: Send + 'static> Pool<T> {
    /// A pool of `items`.
    pub fn new(items: Vec<T>) -> Self {
        Self {
            free: Semaphore::new(items.len()),
            items: Mutex::new(items),
        }
    }

    /// How many objects the pool holds.
    pub fn size(&self) -> usize {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs `job` on a blocking thread with a free object, and puts the object back.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R, PoolError> {
        let permit = self.free.acquire().await.map_err(|_| PoolError::Closed)?;
        let mut item = self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or(PoolError::Closed)?;
        let outcome = tokio::task::spawn_blocking(move || {
            let result = job(&mut item);
            (item, result)
        })
        .await;
        match outcome {
            Ok((item, result)) => {
                self.items
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(item);
                drop(permit);
                Ok(result)
            }
            Err(e) => {
                // The object went down with the job: one permit fewer, so no job waits for it.
                permit.forget();
                Err(PoolError::Failed(e.to_string()))
            }
        }
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
}
