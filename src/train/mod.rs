//! Training: optimizer, schedule, trainer loop, evaluation, checkpoints.
