//! Where resident groups live and how bytes get there. The host backend simulates device
//! memory in host memory with copies on a worker thread, so all of the manager's
//! bookkeeping runs (and is tested) without a GPU.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use super::Error;

/// Device memory and asynchronous host-to-device copies.
pub trait Backend {
    /// A block of device memory.
    type Buffer;
    /// A copy in flight.
    type Ticket;
    /// Starts copying `host[range]` into a fresh device buffer.
    fn start_copy(
        &self,
        host: &Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
    ) -> Result<Self::Ticket, Error>;
    /// Whether the copy has finished (never blocks).
    fn is_done(&self, ticket: &mut Self::Ticket) -> bool;
    /// Blocks until the copy has finished and returns its buffer.
    fn wait(&self, ticket: Self::Ticket) -> Result<Self::Buffer, Error>;
    /// Bytes held by a buffer.
    fn len(&self, buffer: &Self::Buffer) -> usize;
    /// Readies the host pool before it is filled (the CUDA backend page-locks it, so the
    /// fill itself can be a DMA from the device). The pool is never resized or freed
    /// while the manager that owns it lives.
    fn prepare(&self, _host: &Arc<Vec<u8>>) -> Result<(), Error> {
        Ok(())
    }
}

/// Device memory simulated in host memory; copies run on one worker thread, in order, as a
/// copy stream would.
pub struct HostBackend {
    jobs: Sender<Job>,
}

struct Job {
    host: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
    done: Sender<Vec<u8>>,
}

/// A host-backend copy in flight.
pub struct HostTicket {
    rx: Receiver<Vec<u8>>,
    ready: Option<Vec<u8>>,
}

impl Default for HostBackend {
    fn default() -> HostBackend {
        let (tx, rx) = channel::<Job>();
        std::thread::spawn(move || {
            for job in rx {
                let buf = job.host[job.range].to_vec();
                // The receiver may have been dropped with its manager; nothing to do then.
                let _ = job.done.send(buf);
            }
        });
        HostBackend { jobs: tx }
    }
}

impl Backend for HostBackend {
    type Buffer = Vec<u8>;
    type Ticket = HostTicket;

    fn start_copy(
        &self,
        host: &Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
    ) -> Result<HostTicket, Error> {
        let (done, rx) = channel();
        self.jobs
            .send(Job {
                host: host.clone(),
                range,
                done,
            })
            .map_err(|_| Error::Copy("the copy thread has stopped".into()))?;
        Ok(HostTicket { rx, ready: None })
    }

    fn is_done(&self, t: &mut HostTicket) -> bool {
        if t.ready.is_none() {
            t.ready = t.rx.try_recv().ok();
        }
        t.ready.is_some()
    }

    fn wait(&self, mut t: HostTicket) -> Result<Vec<u8>, Error> {
        match t.ready.take() {
            Some(b) => Ok(b),
            None => {
                t.rx.recv()
                    .map_err(|_| Error::Copy("the copy thread has stopped".into()))
            }
        }
    }

    fn len(&self, b: &Vec<u8>) -> usize {
        b.len()
    }
}
