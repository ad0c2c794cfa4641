//! Store calls made together. On sled every transaction writes the log twice, whatever its
//! size, so writes made one transaction each cost the threads, syscalls and disk writes of
//! two log writes apiece. A [`Batcher`] gathers the writes that arrive while one batch is
//! being written (and those of the tasks ready beside the first) into the next call. On etcd
//! every transaction that appends an event reads and bumps the event counter, so such
//! transactions commit one after the other, a round trip and an fsync each: a batch is one
//! transaction for many writes. A store that gains nothing from batches gets a batcher that
//! writes each item at once ([`Store::batches_writes`](crate::store::Store::batches_writes)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Items waiting for one store call, each answered with its own output.
pub struct Batcher<I, O> {
    /// Whether items are gathered at all; if not, each is written alone at once.
    batched: bool,
    queue: Mutex<Queue<I, O>>,
    batches: AtomicU64,
}

struct Queue<I, O> {
    pending: Vec<(I, oneshot::Sender<O>)>,
    /// A thread is writing batches; it looks at `pending` again before it stops.
    writing: bool,
}

impl<I, O> Batcher<I, O> {
    /// A batcher gathering items into batches if `batched`, else writing each alone.
    pub fn new(batched: bool) -> Self {
        Self {
            batched,
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                writing: false,
            }),
            batches: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue<I, O>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `item` to the next batch and waits for its output (or writes it alone, at once,
    /// if this batcher does not batch). `write` makes one store call
    /// for a batch and answers each item in order; every caller of one batcher must pass the
    /// same `write`, since whoever finds the queue idle writes the others' items too. `None`
    /// if the item's batch ended without an answer for it (its writer panicked).
    pub async fn submit(&self, item: I, write: impl Fn(Vec<I>) -> Vec<O>) -> Option<O> {
        if !self.batched {
            return write(vec![item]).into_iter().next();
        }
        let (done, answer) = oneshot::channel();
        self.queue().pending.push((item, done));
        // The tasks ready beside this one add theirs to the same batch.
        tokio::task::yield_now().await;
        self.write_pending(&write);
        answer.await.ok()
    }

    /// How many batches were written.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Writes what is pending, batch after batch, unless another thread is at it. Never
    /// awaits while writing, so a cancelled caller cannot leave the queue without a writer.
    fn write_pending(&self, write: &impl Fn(Vec<I>) -> Vec<O>) {
        struct Writing<'a, I, O>(&'a Batcher<I, O>);
        impl<I, O> Drop for Writing<'_, I, O> {
            fn drop(&mut self) {
                self.0.queue().writing = false;
            }
        }
        {
            let mut queue = self.queue();
            if queue.writing {
                return;
            }
            queue.writing = true;
        }
        let _writing = Writing(self);
        loop {
            let batch = std::mem::take(&mut self.queue().pending);
            if batch.is_empty() {
                return;
            }
            self.batches.fetch_add(1, Ordering::Relaxed);
            let (items, answers): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
            for (answer, output) in answers.into_iter().zip(write(items)) {
                // The caller may be gone (cancelled); what was written stands.
                let _ = answer.send(output);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_submitted_together_are_written_in_one_batch_in_order() {
        let batcher = Batcher::<u32, u32>::new(true);
        let calls = Mutex::new(Vec::new());
        let write = |items: Vec<u32>| {
            calls.lock().expect("calls").push(items.clone());
            items.into_iter().map(|item| item * 10).collect()
        };
        // The current-thread runtime runs every submit up to its yield before any writes.
        let answers = futures::future::join_all((0..5).map(|i| batcher.submit(i, write))).await;
        assert_eq!(answers, [Some(0), Some(10), Some(20), Some(30), Some(40)]);
        assert_eq!(*calls.lock().expect("calls"), [vec![0, 1, 2, 3, 4]]);
        assert_eq!(batcher.batches(), 1);
        // Idle again: a lone item is written by its own caller.
        assert_eq!(batcher.submit(7, write).await, Some(70));
        assert_eq!(batcher.batches(), 2);
    }

    #[tokio::test]
    async fn an_item_left_without_an_answer_gets_none_and_the_queue_stays_usable() {
        let batcher = Batcher::<u32, u32>::new(true);
        assert_eq!(batcher.submit(1, |_| Vec::new()).await, None);
        assert_eq!(batcher.submit(2, |items| items).await, Some(2));
    }

    #[tokio::test]
    async fn a_batcher_not_batching_writes_each_item_alone() {
        let batcher = Batcher::<u32, u32>::new(false);
        let calls = Mutex::new(Vec::new());
        let write = |items: Vec<u32>| {
            calls.lock().expect("calls").push(items.clone());
            items
        };
        let answers = futures::future::join_all((0..3).map(|i| batcher.submit(i, write))).await;
        assert_eq!(answers, [Some(0), Some(1), Some(2)]);
        assert_eq!(*calls.lock().expect("calls"), [vec![0], vec![1], vec![2]]);
        assert_eq!(batcher.batches(), 0, "nothing was gathered");
    }
}
