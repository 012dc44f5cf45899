//! Training: optimizer, schedule, trainer loop, evaluation, checkpoints.

pub mod adamw;
pub mod schedule;

pub use adamw::{clip_grad_norm, AdamW, AdamWConfig};
pub use schedule::LinearSchedule;
