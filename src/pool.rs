//! Small fixed pools of named threads, one per kind of blocking work.
//!
//! SQLite reads, password hashing and blob I/O each get their own pool so no kind
//! can starve another (STYLE.md, "isolate by kind of work"): a flood of logins keeps
//! the argon2 threads busy but leaves SQLite reads and blob chunks alone, and a
//! thousand slow registry clients cost sockets and buffers, never threads, because
//! blob I/O runs as short per-chunk jobs.
//!
//! Each pool has a fixed number of threads and a bounded number of admitted jobs
//! (running plus queued). [`Pool::run`] waits asynchronously for room, which is
//! backpressure that holds no thread; [`Pool::try_run`] refuses at once when full,
//! for callers that would rather answer "busy" than queue (logins).
//!
//! A worker thread may own state built once when it starts (a read connection to
//! the database), handed to every job it runs.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every thread is busy and the queue is full ([`Pool::try_run`] only).
    #[error("the {0} pool is busy")]
    Busy(&'static str),
    /// The pool was shut down, or a job panicked.
    #[error("the {0} pool has stopped")]
    Stopped(&'static str),
}

/// A fixed set of threads running blocking jobs, each thread with its own state `S`.
pub struct Pool<S: 'static = ()> {
    name: &'static str,
    jobs: Mutex<Option<mpsc::Sender<Job<S>>>>,
    admitted: Arc<Semaphore>,
    capacity: usize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Pool<()> {
    /// A pool of `threads` stateless workers admitting at most `capacity` jobs.
    pub fn new(name: &'static str, threads: usize, capacity: usize) -> Pool<()> {
        Pool::with_state(name, threads, capacity, || ())
    }
}

impl<S: 'static> Pool<S> {
    /// A pool whose workers each build their state with `init` when they start.
    pub fn with_state(
        name: &'static str,
        threads: usize,
        capacity: usize,
        init: impl Fn() -> S + Send + Sync + 'static,
    ) -> Pool<S> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let rx = Arc::new(Mutex::new(rx));
        let init = Arc::new(init);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (rx, init) = (rx.clone(), init.clone());
            let spawned = std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                let mut state = init();
                loop {
                    // The lock is held while waiting so idle workers queue on the mutex,
                    // and released before the job runs.
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    };
                    job(&mut state);
                }
            });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => tracing::error!(pool = name, error = %e, "could not start a pool thread"),
            }
        }
        let capacity = capacity.max(threads);
        Pool {
            name,
            jobs: Mutex::new(Some(tx)),
            admitted: Arc::new(Semaphore::new(capacity)),
            capacity,
            threads: Mutex::new(handles),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs `f` on a pool thread, waiting (without holding a thread) for room first.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> T + Send + 'static,
    {
        let permit = self.admitted.clone().acquire_owned().await.map_err(|_| PoolError::Stopped(self.name))?;
        self.dispatch(permit, f).await
    }

    /// Runs `f` on a pool thread, or refuses at once when the pool is full.
    pub async fn try_run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> T + Send + 'static,
    {
        let permit = self.admitted.clone().try_acquire_owned().map_err(|e| match e {
            tokio::sync::TryAcquireError::NoPermits => PoolError::Busy(self.name),
            tokio::sync::TryAcquireError::Closed => PoolError::Stopped(self.name),
        })?;
        self.dispatch(permit, f).await
    }

    /// Runs `f` on a pool thread and blocks the calling (non-async) thread for it.
    pub fn run_blocking<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Box::new(move |s: &mut S| {
            let _ = tx.send(f(s));
        }))?;
        rx.blocking_recv().map_err(|_| PoolError::Stopped(self.name))
    }

    async fn dispatch<T, F>(&self, permit: OwnedSemaphorePermit, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Box::new(move |s: &mut S| {
            let out = f(s);
            drop(permit);
            let _ = tx.send(out);
        }))?;
        rx.await.map_err(|_| PoolError::Stopped(self.name))
    }

    fn send(&self, job: Job<S>) -> Result<(), PoolError> {
        let guard = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().ok_or(PoolError::Stopped(self.name))?.send(job).map_err(|_| PoolError::Stopped(self.name))
    }

    /// Jobs admitted and not finished (running or queued).
    pub fn in_flight(&self) -> usize {
        self.capacity.saturating_sub(self.admitted.available_permits())
    }

    /// Stops the workers after the jobs already queued, and waits for them.
    pub fn shutdown(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.admitted.close();
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

impl<S: 'static> Drop for Pool<S> {
    fn drop(&mut self) {
        // Let the threads end on their own; joining here could block an async thread.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_jobs_with_per_thread_state() {
        let pool = Pool::with_state("t", 2, 8, || 0u32);
        let mut seen = Vec::new();
        for i in 0..10u32 {
            seen.push(
                pool.run(move |count: &mut u32| {
                    *count += 1;
                    i * 2
                })
                .await
                .unwrap(),
            );
        }
        assert_eq!(seen, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        pool.shutdown();
        assert_eq!(pool.run(|_| 1).await, Err(PoolError::Stopped("t")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_pool_refuses_try_run_and_queues_run() {
        let pool = Arc::new(Pool::new("busy", 1, 2));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut held = Vec::new();
        for _ in 0..2 {
            let (p, r) = (pool.clone(), release_rx.clone());
            held.push(tokio::spawn(async move {
                p.run(move |_| {
                    let _ = r.lock().unwrap().recv();
                })
                .await
            }));
        }
        // Both admitted (one running, one queued): the pool is full.
        for _ in 0..200 {
            if pool.admitted.available_permits() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.try_run(|_| ()).await, Err(PoolError::Busy("busy")));
        let p = pool.clone();
        let waiting = tokio::spawn(async move { p.run(|_| 7).await });
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for h in held {
            h.await.unwrap().unwrap();
        }
        assert_eq!(waiting.await.unwrap(), Ok(7));
    }
}
