//! Training: the options, data preparation, one optimizer step, the loop, the outputs it
//! writes (checkpoints, metrics, curves, resume states) and the `train` command.
//!
//! Files import downward only: `records`, `schedule`, `adamw`, `prepare` and `stop` at the
//! bottom;
//! `step` (one optimizer step) and `eval` above them; then `train_loop`, `options`,
//! `checkpoint`, `resume`, `outputs`, `curves`, `lr_search`; `run` (the command) on top.

pub mod adamw;
pub mod checkpoint;
pub mod curves;
pub mod eval;
pub mod lr_search;
pub mod options;
pub mod outputs;
pub mod prepare;
pub mod records;
pub mod resume;
pub mod run;
pub mod schedule;
pub mod step;
pub mod stop;
#[cfg(test)]
mod tests;
pub mod train_loop;

pub use adamw::{clip_grad_norm, AdamW, AdamWConfig};
pub use checkpoint::{load_checkpoint, save_checkpoint, CheckpointMeta};
pub use eval::{evaluate, EvalResult};
pub use options::{LrSpec, MethodArgs, MethodDefaults, TrainCommand, TrainOptions};
pub use records::{EpochRecord, LossPoint, LOSS_WINDOW};
pub use run::{has_resumable_run, run_train, TrainOutcome};
pub use schedule::LinearSchedule;
pub use step::{train_step, StepBatch, StepResult, StepSettings, Trainable};
pub use stop::{clear_stop_request, is_stopped_on_request, request_stop, StoppedOnRequest};
pub use train_loop::{train_loop, train_loop_with, LoopControl, LoopSettings};
