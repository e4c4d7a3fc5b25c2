//! A server (the gateway, an agent) running in the test's process, on a thread and runtime
//! of its own, until the test stops it: how every suite starts the libraries it tests.

use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a server may take to say it is up: far more than a loopback start needs.
const START_WITHIN: Duration = Duration::from_secs(20);

/// Completes when the test stops the server (or drops it).
pub type Stop = tokio::sync::oneshot::Receiver<()>;

/// A server running on its own thread and runtime.
pub struct InProcess {
    /// Sent (or dropped) to stop the server: its `serve` future sees [`Stop`] complete.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Runs `serve` on a new thread `name`, with a runtime of 2 workers; `on_thread_start`
    /// runs first on that thread and on each worker (e.g. to log into the test's buffer).
    /// `serve` sends what the test needs (addresses, keys) on its first argument once the
    /// server is up, then waits for [`Stop`], shuts down and returns. Returns the server and
    /// what it sent.
    ///
    /// # Panics
    ///
    /// If the server does not send within 20 s (or panics first).
    #[track_caller]
    pub fn start<T, F, Fut>(
        name: &str,
        on_thread_start: impl Fn() + Send + Sync + Clone + 'static,
        serve: F,
    ) -> (Self, T)
    where
        T: Send + 'static,
        F: FnOnce(mpsc::Sender<T>, Stop) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                on_thread_start();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .on_thread_start(on_thread_start)
                    .build()
                    .expect("a test runtime");
                runtime.block_on(serve(ready_tx, stop_rx));
            })
            .expect("a thread for the server");
        let ready = ready_rx
            .recv_timeout(START_WITHIN)
            .unwrap_or_else(|e| panic!("{name} did not start within {START_WITHIN:?}: {e}"));
        let server = Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        (server, ready)
    }

    /// Stops the server and waits until it has shut down, at most `within`, and says how it
    /// ended. One still running is left behind, so a shutdown hang fails the test instead of
    /// stalling the suite.
    pub fn stop_within(&mut self, within: Duration) -> Ended {
        drop(self.stop.take());
        let Some(thread) = self.thread.take() else {
            return Ended::Done;
        };
        let deadline = Instant::now() + within;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !thread.is_finished() {
            return Ended::StillRunning;
        }
        match thread.join() {
            Ok(()) => Ended::Done,
            Err(_) => Ended::Panicked,
        }
    }
}

/// How a server ended when the test stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It shut down and returned.
    Done,
    /// Its thread panicked (its message was printed then).
    Panicked,
    /// It did not finish in time (or has not been stopped before).
    StillRunning,
}
