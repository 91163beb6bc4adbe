//! What the daemon does with a list after one of its reconciles: the error policy, in one pure
//! function (kube-rs's `error_policy`), so the scheduling rules read, and are tested, apart
//! from timers and processes.

use crate::reconcile::ListResult;

/// The next step for a list whose reconcile just ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run it again at once: the manifests changed while it ran (it was marked dirty, or it
    /// stopped because its plan was superseded), or it never started (the list was not in
    /// the load when its turn came).
    RunNow,
    /// Converged, or interrupted by shutdown: check it again after the interval.
    Requeue,
    /// Failed: try again after the list's next backoff step (1 s doubling, with jitter).
    Backoff,
    /// The key was refused: every list waits, with the process-wide backoff.
    PauseAll,
}

/// `result` is `None` when the reconcile did not run (the list left the load meanwhile).
pub fn action(result: Option<&ListResult>, dirty: bool) -> Action {
    match result {
        Some(ListResult::Unauthorized(_)) => Action::PauseAll,
        _ if dirty => Action::RunNow,
        None | Some(ListResult::Superseded) => Action::RunNow,
        Some(ListResult::Converged | ListResult::Interrupted) => Action::Requeue,
        Some(
            ListResult::PartiallyFailed
            | ListResult::Refused(_)
            | ListResult::ListNotFound(_)
            | ListResult::ListIsSegment
            | ListResult::Failed(_)
            | ListResult::StoreFailed(_),
        ) => Action::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(r: ListResult) -> Action {
        action(Some(&r), false)
    }

    #[test]
    fn converged_and_interrupted_lists_wait_for_the_interval() {
        assert_eq!(of(ListResult::Converged), Action::Requeue);
        assert_eq!(of(ListResult::Interrupted), Action::Requeue);
    }

    #[test]
    fn failures_back_off_and_never_spin() {
        for r in [
            ListResult::PartiallyFailed,
            ListResult::Refused("t".into()),
            ListResult::ListNotFound("404".into()),
            ListResult::ListIsSegment,
            ListResult::Failed("500".into()),
            ListResult::StoreFailed("disk full".into()),
        ] {
            assert_eq!(of(r.clone()), Action::Backoff, "{r:?}");
        }
    }

    #[test]
    fn a_refused_key_pauses_everything_even_when_the_list_is_dirty() {
        let r = ListResult::Unauthorized("401".into());
        assert_eq!(of(r.clone()), Action::PauseAll);
        assert_eq!(action(Some(&r), true), Action::PauseAll);
    }

    #[test]
    fn a_change_during_the_reconcile_runs_it_again_at_once() {
        assert_eq!(of(ListResult::Superseded), Action::RunNow);
        assert_eq!(action(None, false), Action::RunNow);
        assert_eq!(action(Some(&ListResult::Converged), true), Action::RunNow);
        assert_eq!(
            action(Some(&ListResult::Failed("x".into())), true),
            Action::RunNow
        );
    }
}
