//! Training: optimizer, schedule, trainer loop, evaluation, checkpoints.

pub mod adamw;
mod api;
pub mod checkpoint;
pub mod eval;
pub mod resume;
pub mod schedule;
pub mod trainer;

pub use adamw::{clip_grad_norm, AdamW, AdamWConfig};
pub use checkpoint::{load_checkpoint, save_checkpoint, CheckpointMeta};
pub use eval::{
    classify_texts, evaluate, run_eval, run_predict, EvalOptions, EvalResult, PredictOptions,
};
pub use schedule::LinearSchedule;
pub use trainer::{
    run_train, train_loop, train_loop_with, LoopControl, LoopSettings, TrainOptions, Trainable,
};
