//! Dynamic batching: requests submit preprocessed inputs one by one; worker threads group
//! whatever is waiting (up to `max_batch`, waiting at most `max_wait` after the first
//! input) into one forward pass and hand each caller its own result.
//!
//! One forward over 8 images costs far less than 8 forwards over one, so under load the
//! service answers more requests per second with the same cores. A worker waits for
//! company (at most `max_wait`) only while callers have announced inputs still on their
//! way ([`Batcher::announce`], e.g. images being decoded): a lone request never waits. The queue is bounded: when it is full, `submit` refuses at once
//! (the server answers 503 with `Retry-After`) instead of letting memory grow. A batch
//! that fails or panics answers all its callers with an error, and the worker goes on.
//!
//! The batcher is runtime-agnostic: a caller passes a completion callback (the server's
//! sends on a tokio oneshot channel).
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sizes of the batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Largest number of inputs in one forward pass.
    pub max_batch: usize,
    /// Longest an input waits for others once it is first in line.
    pub max_wait: Duration,
    /// Inputs that may wait at once; more are refused.
    pub queue_capacity: usize,
    /// Threads running forward passes (each forward may itself use several cores).
    pub workers: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self { max_batch: 8, max_wait: Duration::from_millis(2), queue_capacity: 256, workers: 1 }
    }
}

/// Why an input got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The queue is full: try again later.
    #[error("the inference queue is full ({0} waiting)")]
    QueueFull(usize),
    /// The batcher has stopped.
    #[error("the inference workers have stopped")]
    Stopped,
    /// The forward pass returned an error.
    #[error("inference failed: {0}")]
    Failed(String),
    /// The forward pass panicked (the worker survived).
    #[error("inference panicked: {0}")]
    Panicked(String),
}

/// How an input's batch went, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchTiming {
    /// From `submit` to the start of its forward pass.
    pub queue: Duration,
    /// The forward pass.
    pub forward: Duration,
    /// Inputs in that forward pass.
    pub batch_size: usize,
}

/// Called once with the input's result.
pub type Completion<O> = Box<dyn FnOnce(Result<(O, BatchTiming), BatchError>) + Send>;

/// The forward pass: one output per input, in order.
pub type RunBatch<I, O> = dyn Fn(&[I]) -> Result<Vec<O>, String> + Send + Sync;

struct Job<I, O> {
    input: I,
    submitted: Instant,
    done: Completion<O>,
}

/// The queue and its workers; dropping it lets the workers finish what is queued and stop.
pub struct Batcher<I, O> {
    tx: Option<SyncSender<Job<I, O>>>,
    waiting: Arc<AtomicUsize>,
    on_the_way: Arc<AtomicUsize>,
    config: BatcherConfig,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts `config.workers` threads running `run` on batches.
    pub fn new(config: BatcherConfig, run: Arc<RunBatch<I, O>>) -> Self {
        let config = BatcherConfig {
            max_batch: config.max_batch.max(1),
            queue_capacity: config.queue_capacity.max(1),
            workers: config.workers.max(1),
            ..config
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job<I, O>>(config.queue_capacity);
        let rx = Arc::new(Mutex::new(rx));
        let waiting = Arc::new(AtomicUsize::new(0));
        let on_the_way = Arc::new(AtomicUsize::new(0));
        let workers = (0..config.workers)
            .map(|i| {
                let (rx, run, waiting, on_the_way) = (rx.clone(), run.clone(), waiting.clone(), on_the_way.clone());
                std::thread::Builder::new()
                    .name(format!("catsdogs-infer-{i}"))
                    .spawn(move || worker(&rx, &*run, &waiting, &on_the_way, config))
                    .expect("spawn an inference worker thread")
            })
            .collect();
        Self { tx: Some(tx), waiting, on_the_way, config, workers }
    }

    /// Queues one input; `done` is called with its result from a worker thread. Refuses
    /// at once (without calling `done`) when the queue is full or the batcher stopped.
    pub fn submit(&self, input: I, done: Completion<O>) -> Result<(), BatchError> {
        let Some(tx) = &self.tx else { return Err(BatchError::Stopped) };
        self.waiting.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Job { input, submitted: Instant::now(), done }) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => BatchError::QueueFull(self.config.queue_capacity),
                    TrySendError::Disconnected(_) => BatchError::Stopped,
                })
            }
        }
    }

    /// Announces `n` inputs that will be submitted soon (while they are decoded, say):
    /// until the returned guard drops, workers wait up to `max_wait` for them to join.
    pub fn announce(&self, n: usize) -> Arrival {
        self.on_the_way.fetch_add(n, Ordering::SeqCst);
        Arrival { counter: self.on_the_way.clone(), n }
    }

    /// Inputs queued and not yet in a forward pass.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The sizes in use.
    pub fn config(&self) -> BatcherConfig {
        self.config
    }
}

/// Inputs announced with [`Batcher::announce`]; dropping it withdraws the announcement.
pub struct Arrival {
    counter: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.n, Ordering::SeqCst);
    }
}

impl<I, O> Drop for Batcher<I, O> {
    fn drop(&mut self) {
        // Closing the channel ends each worker once the queue is drained.
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker<I, O>(
    rx: &Mutex<Receiver<Job<I, O>>>,
    run: &RunBatch<I, O>,
    waiting: &AtomicUsize,
    on_the_way: &AtomicUsize,
    config: BatcherConfig,
) {
    loop {
        let Some(jobs) = next_batch(rx, on_the_way, config) else { return };
        waiting.fetch_sub(jobs.len(), Ordering::SeqCst);
        run_batch(jobs, run);
    }
}

/// Blocks for a first job, then gathers more until the batch is full, or the first job
/// has waited `max_wait`, or nothing more is queued or announced. `None` once the queue
/// is closed and empty.
fn next_batch<I, O>(
    rx: &Mutex<Receiver<Job<I, O>>>,
    on_the_way: &AtomicUsize,
    config: BatcherConfig,
) -> Option<Vec<Job<I, O>>> {
    // One worker gathers at a time; the others wait here for the next batch.
    let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let first = rx.recv().ok()?;
    let deadline = first.submitted + config.max_wait;
    let mut jobs = vec![first];
    while jobs.len() < config.max_batch {
        // Whatever is already queued joins without waiting.
        match rx.try_recv() {
            Ok(job) => {
                jobs.push(job);
                continue;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || on_the_way.load(Ordering::SeqCst) == 0 {
            break;
        }
        // Poll in short steps: an announced input may be withdrawn (its decoding failed).
        match rx.recv_timeout(left.min(Duration::from_micros(200))) {
            Err(RecvTimeoutError::Timeout) => continue,
            Ok(job) => jobs.push(job),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(jobs)
}

fn run_batch<I, O>(jobs: Vec<Job<I, O>>, run: &RunBatch<I, O>) {
    let started = Instant::now();
    let (inputs, tails): (Vec<I>, Vec<(Instant, Completion<O>)>) =
        jobs.into_iter().map(|j| (j.input, (j.submitted, j.done))).unzip();
    let n = inputs.len();
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| run(&inputs))) {
        Ok(Ok(outputs)) if outputs.len() == n => Ok(outputs),
        Ok(Ok(outputs)) => Err(BatchError::Failed(format!("{} outputs for {n} inputs", outputs.len()))),
        Ok(Err(e)) => Err(BatchError::Failed(e)),
        Err(panic) => Err(BatchError::Panicked(panic_message(panic.as_ref()))),
    };
    let forward = started.elapsed();
    let timing = |submitted: Instant| BatchTiming { queue: started - submitted, forward, batch_size: n };
    match outcome {
        Ok(outputs) => {
            for ((submitted, done), out) in tails.into_iter().zip(outputs) {
                done(Ok((out, timing(submitted))));
            }
        }
        Err(e) => {
            for (_, done) in tails {
                done(Err(e.clone()));
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    type Outcome = Result<(u32, BatchTiming), BatchError>;

    fn doubler(log: Arc<Mutex<Vec<usize>>>) -> Arc<RunBatch<u32, u32>> {
        Arc::new(move |xs: &[u32]| {
            log.lock().unwrap().push(xs.len());
            if xs.contains(&666) {
                panic!("the model blew up");
            }
            if xs.contains(&13) {
                return Err("unlucky input".into());
            }
            Ok(xs.iter().map(|x| x * 2).collect())
        })
    }

    fn submit(b: &Batcher<u32, u32>, x: u32) -> std::sync::mpsc::Receiver<Outcome> {
        let (tx, rx) = channel();
        b.submit(x, Box::new(move |r| tx.send(r).unwrap())).expect("queued");
        rx
    }

    #[test]
    fn results_reach_their_own_callers_in_shared_batches() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let cfg = BatcherConfig { max_batch: 8, max_wait: Duration::from_millis(50), queue_capacity: 100, workers: 2 };
        let b = Batcher::new(cfg, doubler(log.clone()));
        let rxs: Vec<_> = (100..140).map(|x| (x, submit(&b, x))).collect();
        for (x, rx) in rxs {
            let (y, timing) = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
            assert_eq!(y, 2 * x, "caller {x} got another caller's result");
            assert!(timing.batch_size >= 1 && timing.batch_size <= 8);
        }
        let sizes = log.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.iter().all(|&n| n <= 8));
        assert!(sizes.len() < 40, "inputs queued together were never batched: {sizes:?}");
    }

    #[test]
    fn a_lone_input_does_not_wait_for_company_nobody_announced() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let cfg = BatcherConfig { max_batch: 32, max_wait: Duration::from_millis(500), queue_capacity: 10, workers: 1 };
        let b = Batcher::new(cfg, doubler(log));
        let (y, timing) = submit(&b, 21).recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(y, 42);
        assert!(timing.queue < Duration::from_millis(100), "{:?}", timing.queue);
    }

    #[test]
    fn an_announced_input_is_waited_for_at_most_max_wait() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let cfg = BatcherConfig { max_batch: 32, max_wait: Duration::from_millis(30), queue_capacity: 10, workers: 1 };
        let b = Batcher::new(cfg, doubler(log));
        // Announced but never sent: the first input waits max_wait for it, no longer.
        let _arrival = b.announce(1);
        let started = Instant::now();
        let (y, timing) = submit(&b, 21).recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(y, 42);
        assert_eq!(timing.batch_size, 1);
        // It waited for company for about max_wait, not for a full batch.
        assert!(timing.queue >= Duration::from_millis(25), "{:?}", timing.queue);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let run: Arc<RunBatch<u32, u32>> = {
            let gate = gate.clone();
            Arc::new(move |xs: &[u32]| {
                let _wait = gate.lock().unwrap();
                Ok(xs.to_vec())
            })
        };
        let cfg = BatcherConfig { max_batch: 1, max_wait: Duration::ZERO, queue_capacity: 2, workers: 1 };
        let b = Batcher::new(cfg, run);
        // One input blocks the worker, two fill the queue, the next is refused.
        let first = submit(&b, 0);
        std::thread::sleep(Duration::from_millis(100));
        let queued = [submit(&b, 1), submit(&b, 2)];
        assert_eq!(b.waiting(), 2);
        let refused = b.submit(3, Box::new(|_| panic!("a refused input must not be answered")));
        assert_eq!(refused, Err(BatchError::QueueFull(2)));
        drop(held);
        assert_eq!(first.recv_timeout(Duration::from_secs(5)).unwrap().unwrap().0, 0);
        for (i, rx) in queued.iter().enumerate() {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap().0, i as u32 + 1);
        }
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn failing_and_panicking_batches_answer_everyone_and_the_worker_survives() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let cfg = BatcherConfig { max_batch: 4, max_wait: Duration::from_millis(20), queue_capacity: 10, workers: 1 };
        let b = Batcher::new(cfg, doubler(log));
        for (poison, expect_panic) in [(666, true), (13, false)] {
            let rxs = [submit(&b, 1), submit(&b, poison), submit(&b, 3)];
            for rx in rxs {
                match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                    Err(BatchError::Panicked(m)) if expect_panic => assert!(m.contains("blew up")),
                    Err(BatchError::Failed(m)) if !expect_panic => assert!(m.contains("unlucky")),
                    // A caller that landed in a batch without the poison gets its result.
                    Ok((y, _)) => assert!(y == 2 || y == 6),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        // The worker is still there.
        assert_eq!(submit(&b, 5).recv_timeout(Duration::from_secs(5)).unwrap().unwrap().0, 10);
    }

    #[test]
    fn dropping_the_batcher_finishes_queued_inputs() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let cfg = BatcherConfig { max_batch: 2, max_wait: Duration::from_millis(5), queue_capacity: 10, workers: 1 };
        let b = Batcher::new(cfg, doubler(log));
        let rxs: Vec<_> = (0..6).map(|x| submit(&b, x)).collect();
        drop(b);
        for (x, rx) in rxs.into_iter().enumerate() {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap().0, 2 * x as u32);
        }
    }
}
