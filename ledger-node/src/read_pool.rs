//! A few blocking threads that run the ledger reads of proof requests, many per wake-up.
//!
//! sled reads may page in from disk, so they MUST NOT run on the async runtime. Handing each
//! proof to `tokio::task::spawn_blocking` wakes a sleeping pool thread per request (a futex
//! wake and two context switches), which cost half of a node's proof throughput on two cores
//! (measured: ~20k proofs/s with a hop per proof, ~32k/s with none). Here requests queue in
//! one bounded channel and a reader thread drains everything queued before it sleeps again,
//! so under load one wake-up serves a batch.

use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::storage::reader::LedgerReader;

/// Reader threads per node. Two keep proofs flowing while one waits on a page-in, without
/// competing with the runtime's workers for a small machine's cores.
pub const READ_THREADS: usize = 2;
/// Requests waiting for a reader thread; beyond this, callers wait for room (backpressure).
pub const READ_QUEUE_MAX: usize = 1024;
/// Most queued requests one reader takes at once, so the other reader gets a share.
const BATCH_MAX: usize = 64;

/// A handle on the reader threads; cheap to clone. The threads stop once every handle is
/// dropped and the queue is empty.
#[derive(Clone, Debug)]
pub struct ReadPool {
    jobs: mpsc::Sender<Job>,
}

/// Why a read could not be run.
#[derive(Debug, thiserror::Error)]
#[error("the ledger reader threads are gone")]
pub struct ReadPoolClosed;

type Job = Box<dyn FnOnce(&LedgerReader) + Send>;

impl ReadPool {
    /// Starts [`READ_THREADS`] threads reading through `reader`.
    pub fn start(reader: &LedgerReader) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>(READ_QUEUE_MAX);
        let queue = Arc::new(Mutex::new(queue));
        for number in 0..READ_THREADS {
            let (queue, reader) = (Arc::clone(&queue), reader.clone());
            thread::Builder::new()
                .name(format!("ledger-read-{number}"))
                .spawn(move || serve(&queue, &reader))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `read` on a reader thread and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&LedgerReader) -> T + Send + 'static,
    ) -> Result<T, ReadPoolClosed> {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |reader| {
            // The requester may have gone away (a cancelled call): nothing to tell it then.
            let _ = reply.send(read(reader));
        });
        self.jobs.send(job).await.map_err(|_| ReadPoolClosed)?;
        result.await.map_err(|_| ReadPoolClosed)
    }
}

/// One reader thread: takes whatever is queued (up to [`BATCH_MAX`]), runs it, and sleeps only
/// when the queue is empty.
fn serve(queue: &Mutex<mpsc::Receiver<Job>>, reader: &LedgerReader) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        {
            let mut queue = queue.lock().expect("the read queue lock is never poisoned");
            match queue.blocking_recv() {
                Some(job) => batch.push(job),
                None => return, // every handle dropped
            }
            while batch.len() < BATCH_MAX {
                let Ok(job) = queue.try_recv() else { break };
                batch.push(job);
            }
        }
        for job in batch.drain(..) {
            job(reader);
        }
    }
}
