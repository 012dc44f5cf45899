//! The APIs the trainer uses, gathered in one place.

pub use crate::data::tokenize::TextTokenizer;
pub use crate::data::{
    label_ids, load_dataset, stratified_split, DatasetSplits, Example, ReadOptions,
};
pub use crate::kernels::loss::{distillation_loss, softmax_cross_entropy, softmax_rows};
pub use crate::metrics::ClassificationReport;
pub use crate::model::checkpoint::{load_hf_checkpoint, read_safetensors, write_safetensors};
