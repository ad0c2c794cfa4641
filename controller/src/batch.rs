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

use tokio::sync::{oneshot, Notify};

/// Items waiting for one store call, each answered with its own output.
pub struct Batcher<I, O> {
    /// Whether items are gathered at all; if not, each is written alone at once.
    batched: bool,
    queue: Mutex<Queue<I, O>>,
    /// Wakes a caller still waiting when a writer stops with items pending: it writes them.
    turn: Notify,
    batches: AtomicU64,
}

struct Queue<I, O> {
    pending: Vec<(I, oneshot::Sender<O>)>,
    /// A thread is writing a batch; when it stops, a waiting caller writes the next.
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
            turn: Notify::new(),
            batches: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue<I, O>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `item` to the next batch and waits for its output (or writes it alone, at once,
    /// if this batcher does not batch). `write` makes one store call
    /// for a batch and answers each item in order; every caller of one batcher must pass the
    /// same `write`, since whoever finds the queue idle writes the others' items too. A caller
    /// writes one batch of waited-for items, the one with its own item or, woken when a writer
    /// stopped, the next; so under a steady stream of items no caller keeps writing the others'
    /// batches long after its own was answered. A caller cancelled before its answer writes
    /// what is pending if no one is writing, as a woken caller would have. `None` if the
    /// item's batch ended without an answer for it (its writer panicked).
    pub async fn submit<W: Fn(Vec<I>) -> Vec<O>>(&self, item: I, write: W) -> Option<O> {
        if !self.batched {
            return write(vec![item]).into_iter().next();
        }
        let (done, answer) = oneshot::channel();
        self.queue().pending.push((item, done));
        let mut waiting = Waiting {
            batcher: self,
            write: &write,
            answer: Some(answer),
        };
        // The tasks ready beside this one add theirs to the same batch.
        tokio::task::yield_now().await;
        loop {
            self.write_pending(&write);
            let answer = waiting.answer.as_mut()?;
            tokio::select! {
                biased;
                output = answer => {
                    waiting.answer = None;
                    return output.ok();
                }
                // A writer stopped with items pending (this one's, maybe): write them.
                () = self.turn.notified() => {}
            }
        }
    }

    /// How many batches were written.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Writes what is pending as one batch, unless another thread is writing one. When done,
    /// wakes a waiting caller if more items came meanwhile; if every caller of those is gone
    /// (cancelled), writes them itself, so no item is left for a later caller to commit
    /// long after. Whether to stop and the end of writing are one step under the queue's
    /// lock, so a caller cancelled meanwhile either sees no writer (and writes) or is seen
    /// gone by the writer's next look. Never awaits while writing, so a cancelled caller
    /// cannot leave the queue without a writer.
    fn write_pending(&self, write: &impl Fn(Vec<I>) -> Vec<O>) {
        /// Ends the writing if `write` panics.
        struct Writing<'a, I, O>(&'a Batcher<I, O>);
        impl<I, O> Drop for Writing<'_, I, O> {
            fn drop(&mut self) {
                self.0.stop_writing(&mut self.0.queue());
            }
        }
        {
            let mut queue = self.queue();
            if queue.writing {
                return;
            }
            queue.writing = true;
        }
        let writing = Writing(self);
        let mut first = true;
        loop {
            let batch = {
                let mut queue = self.queue();
                // After the first batch, only items whose callers are all gone.
                let waited_for = || queue.pending.iter().any(|(_, answer)| !answer.is_closed());
                if queue.pending.is_empty() || (!first && waited_for()) {
                    self.stop_writing(&mut queue);
                    // Stopped already, under this lock.
                    std::mem::forget(writing);
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            first = false;
            self.batches.fetch_add(1, Ordering::Relaxed);
            let (items, answers): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
            for (answer, output) in answers.into_iter().zip(write(items)) {
                // The caller may be gone (cancelled); what was written stands.
                let _ = answer.send(output);
            }
        }
    }

    /// Ends a writer's turn; a waiting caller writes what is pending.
    fn stop_writing(&self, queue: &mut Queue<I, O>) {
        queue.writing = false;
        if !queue.pending.is_empty() {
            self.turn.notify_one();
        }
    }
}

/// A caller waiting for its answer. Dropped before the answer came (the caller cancelled),
/// it writes what is pending unless a writer is at it: the turn a writer handed to this
/// caller when it stopped would otherwise stay with no one until the next item comes.
struct Waiting<'a, I, O, W: Fn(Vec<I>) -> Vec<O>> {
    batcher: &'a Batcher<I, O>,
    write: &'a W,
    answer: Option<oneshot::Receiver<O>>,
}

impl<I, O, W: Fn(Vec<I>) -> Vec<O>> Drop for Waiting<'_, I, O, W> {
    fn drop(&mut self) {
        if let Some(answer) = self.answer.take() {
            // Gone first, so that a writer looking after this sees its item as abandoned.
            drop(answer);
            self.batcher.write_pending(self.write);
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

    /// Items keep coming while a batch is written: its writer returns with its own answer and
    /// a caller still waiting writes the next batch (the writer used to keep writing every
    /// later batch while any item was pending, its own answer held up meanwhile).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_writes_one_batch_and_a_waiting_caller_writes_the_next() {
        let batcher = std::sync::Arc::new(Batcher::<u32, u32>::new(true));
        let writers = std::sync::Arc::new(Mutex::new(Vec::new()));
        let recording = |who: &'static str| {
            let batcher = batcher.clone();
            let writers = writers.clone();
            move |items: Vec<u32>| {
                writers.lock().expect("writers").push((who, items.clone()));
                if items == [1] {
                    // The second item arrives while this batch is being written.
                    while batcher.queue().pending.is_empty() {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                items.into_iter().map(|item| item * 10).collect()
            }
        };
        let first = tokio::spawn({
            let (batcher, write) = (batcher.clone(), recording("first"));
            async move { batcher.submit(1, write).await }
        });
        while batcher.batches() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let second = tokio::spawn({
            let (batcher, write) = (batcher.clone(), recording("second"));
            async move { batcher.submit(2, write).await }
        });
        assert_eq!(first.await.expect("first"), Some(10));
        assert_eq!(second.await.expect("second"), Some(20));
        assert_eq!(
            *writers.lock().expect("writers"),
            [("first", vec![1]), ("second", vec![2])],
            "each caller wrote the batch of its own item"
        );
    }

    /// An item whose caller went away (cancelled) while another batch was written is still
    /// written by that batch's writer, not left for whoever submits next.
    #[tokio::test]
    async fn items_of_callers_gone_are_written_by_the_writer() {
        let batcher = Batcher::<u32, u32>::new(true);
        let calls = Mutex::new(Vec::new());
        let (gone, answer) = oneshot::channel();
        drop(answer);
        let gone = Mutex::new(Some(gone));
        let write = |items: Vec<u32>| {
            calls.lock().expect("calls").push(items.clone());
            // Submitted while the first batch is written, by a caller gone before its answer.
            if let Some(gone) = gone.lock().expect("gone").take() {
                batcher.queue().pending.push((2, gone));
            }
            items
        };
        assert_eq!(batcher.submit(1, write).await, Some(1));
        assert_eq!(*calls.lock().expect("calls"), [vec![1], vec![2]]);
    }

    /// A writer stops with an item pending and hands its turn to that item's waiting caller,
    /// which is cancelled before it runs: it writes the item as it goes (the item used to wait
    /// for whoever submitted next, and an idle node's create could commit much later).
    #[tokio::test]
    async fn a_caller_cancelled_after_its_turn_came_writes_what_is_pending() {
        use std::future::Future;
        let batcher = Batcher::<u32, u32>::new(true);
        let calls = Mutex::new(Vec::new());
        let record = |items: Vec<u32>| {
            calls.lock().expect("calls").push(items.clone());
            items
        };
        let second = std::cell::RefCell::new(Box::pin(batcher.submit(2, &record)));
        let first = batcher.submit(1, |items: Vec<u32>| {
            // While the first batch is written, the second caller queues its item and waits.
            let mut context = std::task::Context::from_waker(futures::task::noop_waker_ref());
            for _ in 0..2 {
                let polled = second.borrow_mut().as_mut().poll(&mut context);
                assert!(polled.is_pending());
            }
            record(items)
        });
        assert_eq!(first.await, Some(1));
        assert_eq!(
            *calls.lock().expect("calls"),
            [vec![1]],
            "the second was waited for"
        );
        drop(second);
        assert_eq!(*calls.lock().expect("calls"), [vec![1], vec![2]]);
        assert!(batcher.queue().pending.is_empty() && !batcher.queue().writing);
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
