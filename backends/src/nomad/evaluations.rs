//! Waiting for evaluations (`reference/nomad-api.md` §4): a registration is only done when the
//! scheduler has processed its evaluation and placed every allocation.
//!
//! The event stream is the first source: its Evaluation topic carries every status change, and
//! the executor's follower task hands each terminal evaluation to the [`EvaluationBoard`]. The
//! fallback is `GET /v1/evaluation/:id`, polled by the waiter itself, for what the stream cannot
//! deliver in time: a stream that is reconnecting, stalled (§10 row 2) or behind a gap (§10 row
//! 3). The race of §10 row 13 — the evaluation finishes before its waiter exists, because the
//! scheduler is faster than the register call's answer — is closed by the board remembering the
//! last [`FINISHED_MAX`] terminal evaluations nobody waited for yet.
//!
//! Judgement ([`judge`]): `complete` without `FailedTGAllocs` is success; `complete` with them
//! is a placement failure; `failed` and `canceled` are failures; a waiter that hears nothing
//! before its deadline fails with a timeout. Never success by default, unlike Poseidon's
//! `MonitorEvaluation`, whose 10 s timeout returned a nil error (`reference/poseidon.md` §6.5).
//!
//! Bounds: the remembered evaluations are a FIFO of at most [`FINISHED_MAX`]; the waiters are
//! one per registration in flight (the driver bounds those), each removed when it is answered
//! or dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::model::{Evaluation, EvaluationStatus, Event, Topic};
use crate::BackendError;

/// Terminal evaluations remembered for waiters that do not exist yet. A waiter registers
/// milliseconds after its evaluation was created; it misses its evaluation here only if more
/// than this many others finished in between, and then the fallback poll finds it.
pub const FINISHED_MAX: usize = 1_024;

/// Where terminal evaluations meet the registrations waiting for them. Cheap to share
/// (`Arc`); every method takes the lock briefly and never awaits under it.
#[derive(Debug, Default)]
pub struct EvaluationBoard {
    inner: Mutex<Board>,
}

#[derive(Debug, Default)]
struct Board {
    /// Registrations waiting, by evaluation id, with the number of their watch.
    waiting: BTreeMap<String, (u64, oneshot::Sender<Evaluation>)>,
    /// The number of the next watch.
    next_watch: u64,
    /// Terminal evaluations nobody waited for (yet), by id; `order` is their arrival order.
    finished: BTreeMap<String, Evaluation>,
    order: VecDeque<String>,
}

impl EvaluationBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the evaluations of one event-stream frame: the terminal ones answer their waiter,
    /// or are remembered for a waiter to come. Other events are not looked at.
    pub fn take_events<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        for event in events {
            if event.topic != Topic::Evaluation {
                continue;
            }
            if let Some(evaluation) = &event.payload.evaluation {
                self.finished(evaluation.clone());
            }
        }
    }

    /// One evaluation seen: if it is terminal, its waiter hears of it, or it is remembered.
    pub fn finished(&self, evaluation: Evaluation) {
        if !evaluation.status.is_terminal() || evaluation.id.is_empty() {
            return;
        }
        let mut board = self.lock();
        if let Some((_, waiter)) = board.waiting.remove(&evaluation.id) {
            // A waiter that gave up in the meantime drops its receiver: nothing to do.
            let _ = waiter.send(evaluation);
            return;
        }
        if board.finished.contains_key(&evaluation.id) {
            // A replayed frame; the first report stands (terminal statuses do not change).
            return;
        }
        if board.order.len() == FINISHED_MAX {
            let oldest = board
                .order
                .pop_front()
                .expect("a full FIFO has an oldest entry");
            board.finished.remove(&oldest);
        }
        board.order.push_back(evaluation.id.clone());
        board.finished.insert(evaluation.id.clone(), evaluation);
        debug_assert_eq!(board.order.len(), board.finished.len());
    }

    /// Waits for evaluation `id`: at once if it finished already. The waiter leaves the board
    /// when it is dropped.
    pub fn watch(self: &Arc<Self>, id: &str) -> EvaluationWatch {
        let (sender, receiver) = oneshot::channel();
        let mut board = self.lock();
        let number = board.next_watch;
        board.next_watch += 1;
        if let Some(evaluation) = board.finished.remove(id) {
            board.order.retain(|finished| finished != id);
            let _ = sender.send(evaluation);
        } else {
            // A second waiter for the same id replaces the first, whose receiver then ends:
            // it falls back to polling. Registrations never share an evaluation.
            board.waiting.insert(id.to_owned(), (number, sender));
        }
        EvaluationWatch {
            board: Arc::clone(self),
            id: id.to_owned(),
            number,
            receiver,
        }
    }

    /// Registrations waiting right now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Terminal evaluations remembered right now.
    pub fn remembered(&self) -> usize {
        self.lock().finished.len()
    }
}

/// One registration's wait for its evaluation through the event stream.
#[derive(Debug)]
pub struct EvaluationWatch {
    board: Arc<EvaluationBoard>,
    id: String,
    number: u64,
    receiver: oneshot::Receiver<Evaluation>,
}

impl EvaluationWatch {
    /// The evaluation, once the stream reported it terminal; `None` if this waiter was
    /// replaced (then only polling can answer).
    pub async fn finished(&mut self) -> Option<Evaluation> {
        (&mut self.receiver).await.ok()
    }
}

impl Drop for EvaluationWatch {
    fn drop(&mut self) {
        let mut board = self.board.lock();
        // Only this waiter's own entry: a replacement's stays.
        if board
            .waiting
            .get(&self.id)
            .is_some_and(|(number, _)| *number == self.number)
        {
            board.waiting.remove(&self.id);
        }
    }
}

/// What a terminal evaluation means for the registration that created it.
pub fn judge(evaluation: &Evaluation) -> Result<(), BackendError> {
    let id = &evaluation.id;
    match &evaluation.status {
        EvaluationStatus::Complete if evaluation.failed_task_group_allocations.is_empty() => Ok(()),
        EvaluationStatus::Complete => Err(BackendError::Unavailable(format!(
            "evaluation {id} could not place every allocation: {}",
            serde_json::Value::Object(
                evaluation
                    .failed_task_group_allocations
                    .clone()
                    .into_iter()
                    .collect()
            )
        ))),
        status => Err(BackendError::Failed(format!(
            "evaluation {id} ended {}: {}",
            status.as_str(),
            evaluation.status_description
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluation(id: &str, status: EvaluationStatus) -> Evaluation {
        Evaluation {
            id: id.to_owned(),
            status,
            ..Evaluation::default()
        }
    }

    fn now<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(value) => Some(value),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn a_waiter_hears_its_terminal_evaluation_and_leaves() {
        let board = Arc::new(EvaluationBoard::new());
        let mut watch = board.watch("e1");
        assert_eq!(board.waiting(), 1);
        board.finished(evaluation("e1", EvaluationStatus::Pending));
        board.finished(evaluation("e1", EvaluationStatus::Blocked));
        assert_eq!(now(watch.finished()), None, "not terminal yet");
        board.finished(evaluation("e2", EvaluationStatus::Complete));
        board.finished(evaluation("e1", EvaluationStatus::Complete));
        let heard = now(watch.finished()).flatten().expect("answered");
        assert_eq!(heard.id, "e1");
        assert_eq!(board.waiting(), 0);
        assert_eq!(board.remembered(), 1, "e2 waits for its waiter");
    }

    #[test]
    fn an_evaluation_that_finished_before_its_waiter_is_found_at_once() {
        // nomad-api.md §10 row 13: the scheduler beats the register call's answer.
        let board = Arc::new(EvaluationBoard::new());
        board.finished(evaluation("early", EvaluationStatus::Failed));
        let mut watch = board.watch("early");
        let heard = now(watch.finished()).flatten().expect("answered at once");
        assert_eq!(heard.status, EvaluationStatus::Failed);
        assert_eq!(board.remembered(), 0);
        assert_eq!(board.waiting(), 0);
    }

    #[test]
    fn remembered_evaluations_are_bounded_oldest_first() {
        let board = Arc::new(EvaluationBoard::new());
        for n in 0..FINISHED_MAX + 10 {
            board.finished(evaluation(&format!("e{n}"), EvaluationStatus::Complete));
        }
        assert_eq!(board.remembered(), FINISHED_MAX);
        let mut evicted = board.watch("e9");
        assert_eq!(now(evicted.finished()), None, "the oldest were forgotten");
        let mut kept = board.watch("e10");
        assert!(now(kept.finished()).flatten().is_some());
        // A replayed frame does not count twice.
        board.finished(evaluation("e11", EvaluationStatus::Complete));
        assert_eq!(board.remembered(), FINISHED_MAX - 1);
    }

    #[test]
    fn a_dropped_waiter_leaves_the_board() {
        let board = Arc::new(EvaluationBoard::new());
        let first = board.watch("e");
        let mut second = board.watch("e");
        drop(first);
        assert_eq!(board.waiting(), 1, "the replacement stays");
        assert_eq!(now(second.finished()), None);
        drop(second);
        assert_eq!(board.waiting(), 0);
        // Nobody waits now: the evaluation is remembered instead.
        board.finished(evaluation("e", EvaluationStatus::Complete));
        assert_eq!(board.remembered(), 1);
    }

    #[test]
    fn only_a_complete_evaluation_without_failed_groups_is_success() {
        assert!(judge(&evaluation("e", EvaluationStatus::Complete)).is_ok());
        let mut unplaced = evaluation("e", EvaluationStatus::Complete);
        unplaced.failed_task_group_allocations.insert(
            "default-group".into(),
            serde_json::json!({"NodesExhausted": 1}),
        );
        let error = judge(&unplaced).expect_err("a placement failure");
        assert!(
            matches!(&error, BackendError::Unavailable(message)
                if message.contains("could not place") && message.contains("default-group")),
            "{error:?}"
        );
        let mut failed = evaluation("e", EvaluationStatus::Failed);
        failed.status_description = "maximum attempts reached (5)".into();
        let error = judge(&failed).expect_err("failed");
        assert!(
            matches!(&error, BackendError::Failed(message)
                if message.contains("failed") && message.contains("maximum attempts")),
            "{error:?}"
        );
        assert!(judge(&evaluation("e", EvaluationStatus::Canceled)).is_err());
    }
}
