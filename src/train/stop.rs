//! Stopping a training run on request, for front ends that catch an interrupt themselves
//! (the Python package turns Ctrl-C into [`request_stop`]; the CLI never calls it, so a
//! Ctrl-C there ends the process, and the crash-safe saves keep the checkpoint intact).
//!
//! The flag is process-wide: a request stops every training loop running in the process
//! after its current optimizer step; the main loop saves its resume state first, so the
//! run continues with `--resume`.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks running training loops to stop after their current optimizer step.
pub fn request_stop() {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Withdraws a stop request (before starting a new run).
pub fn clear_stop_request() {
    STOP_REQUESTED.store(false, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// The error a training loop ends with after a [`request_stop`].
#[derive(Debug)]
pub struct StoppedOnRequest {
    /// Optimizer steps taken (by the loop that stopped).
    pub step: u64,
}

impl std::fmt::Display for StoppedOnRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted after optimizer step {}", self.step)
    }
}

impl std::error::Error for StoppedOnRequest {}

/// Whether `err` (or an error it wraps) is a [`StoppedOnRequest`].
pub fn is_stopped_on_request(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<StoppedOnRequest>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_is_recognised_through_context() {
        let e = anyhow::Error::from(StoppedOnRequest { step: 7 }).context("training stopped");
        assert!(is_stopped_on_request(&e));
        assert_eq!(
            format!("{e:#}"),
            "training stopped: interrupted after optimizer step 7"
        );
        assert!(!is_stopped_on_request(&anyhow::anyhow!("other")));
    }
}
