//! corefocus checkpoints: a directory with `model.safetensors` (every model parameter
//! under its HF name, plus `comb_tokens`, `combiner.*`, `classifier.*`), `config.json` (the
//! BertConfig), the tokenizer files and `corefocus.json` ([`CheckpointMeta`]).
//!
//! A checkpoint is written completely into a temporary sibling directory, then swapped in
//! by renames, so a crash never leaves a half-written checkpoint under the real name.
//! Files in the old directory that are not part of a checkpoint (`metrics.jsonl`,
//! reports) are carried over into the new one.

use super::options::TrainOptions;
use crate::data::tokenize::TextTokenizer;
use crate::model::checkpoint::{read_safetensors, write_safetensors};
use crate::model::{names, BertConfig, CombineBlock, MethodConfig, Model, ParamStore, Pooling};
use crate::util::{replace_dir_atomically, split_dir, utc_timestamp, write_atomic};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

pub const FORMAT_VERSION: u32 = 1;
pub const META_FILE: &str = "corefocus.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// `corefocus.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    pub format_version: u32,
    /// Class names; index i is logit i.
    pub labels: Vec<String>,
    pub method: MethodConfig,
    /// Truncation length used in training (and to be used for inference).
    pub max_len: usize,
    /// The training run's settings (absent for checkpoints not made by `train`).
    #[serde(default)]
    pub train: Option<TrainOptions>,
    /// 1-based epoch whose parameters these are, and its validation loss.
    #[serde(default)]
    pub best_epoch: Option<usize>,
    #[serde(default)]
    pub best_val_loss: Option<f64>,
    /// UTC time of writing, RFC 3339.
    pub created: String,
    #[serde(default)]
    pub corefocus_version: String,
}

impl CheckpointMeta {
    pub fn new(
        labels: Vec<String>,
        method: MethodConfig,
        max_len: usize,
        train: Option<TrainOptions>,
        best_epoch: Option<usize>,
        best_val_loss: Option<f64>,
    ) -> Self {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            labels,
            method,
            max_len,
            train,
            best_epoch,
            best_val_loss,
            created: utc_timestamp(),
            corefocus_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Reads and checks `corefocus.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let meta: CheckpointMeta = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a valid corefocus checkpoint description",
                path.display()
            )
        })?;
        meta.validate()
            .with_context(|| format!("{}: invalid checkpoint description", path.display()))?;
        Ok(meta)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=FORMAT_VERSION).contains(&self.format_version),
            "field `format_version` = {} is not supported (this build reads up to {FORMAT_VERSION})",
            self.format_version
        );
        ensure!(
            self.labels.len() >= 2,
            "field `labels` must list at least 2 classes"
        );
        let unique: HashSet<&String> = self.labels.iter().collect();
        ensure!(
            unique.len() == self.labels.len(),
            "field `labels` has duplicates"
        );
        ensure!(
            self.max_len >= 2,
            "field `max_len` = {} must be at least 2",
            self.max_len
        );
        Ok(())
    }
}

/// Saves `model` (with its tokenizer and `meta`) as the checkpoint directory `dir`,
/// replacing any previous checkpoint there atomically.
pub fn save_checkpoint(
    dir: &Path,
    model: &Model,
    tokenizer: &TextTokenizer,
    meta: &CheckpointMeta,
) -> Result<()> {
    assert_eq!(
        meta.method, model.method,
        "checkpoint metadata must describe the model's method"
    );
    assert_eq!(
        meta.labels.len(),
        model.num_labels,
        "checkpoint labels vs model classes"
    );
    replace_dir_atomically(dir, |tmp| {
        let metadata = BTreeMap::from([
            ("format".to_string(), "pt".to_string()),
            (
                "corefocus_format_version".to_string(),
                FORMAT_VERSION.to_string(),
            ),
        ]);
        write_safetensors(&tmp.join(MODEL_FILE), &model.params, Some(&metadata))?;
        write_atomic(
            &tmp.join(CONFIG_FILE),
            serde_json::to_string_pretty(&model.bert)?.as_bytes(),
        )?;
        tokenizer
            .save(tmp)
            .with_context(|| format!("cannot save the tokenizer to {}", tmp.display()))?;
        // Last, so a directory with corefocus.json is always complete.
        write_atomic(
            &tmp.join(META_FILE),
            serde_json::to_string_pretty(meta)?.as_bytes(),
        )
    })
    .with_context(|| format!("cannot save the checkpoint {}", dir.display()))
}

/// Loads a checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint(dir: &Path) -> Result<(Model, TextTokenizer, CheckpointMeta)> {
    let meta_path = dir.join(META_FILE);
    if !meta_path.is_file() {
        bail!("{}", missing_checkpoint_message(dir));
    }
    let meta = CheckpointMeta::read(&meta_path)?;
    let bert = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
    meta.method
        .validate(bert.num_hidden_layers)
        .with_context(|| {
            format!(
                "{}: method settings do not fit the model",
                meta_path.display()
            )
        })?;
    ensure!(
        meta.max_len <= bert.max_position_embeddings,
        "{}: field `max_len` = {} exceeds the model's {} position embeddings",
        meta_path.display(),
        meta.max_len,
        bert.max_position_embeddings
    );
    let params = read_safetensors(&dir.join(MODEL_FILE), false)?;
    check_finite(&params, &dir.join(MODEL_FILE))?;
    let extra = unexpected_tensors(&params, &bert, &meta.method);
    ensure!(
        extra.is_empty(),
        "{}: {} tensor(s) the model described by {CONFIG_FILE} and {META_FILE} does not have \
         (e.g. {}); do these files belong together?",
        dir.join(MODEL_FILE).display(),
        extra.len(),
        extra.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    );
    let model = Model::from_params(bert, meta.method.clone(), meta.labels.len(), params)
        .with_context(|| {
            format!(
                "{}: parameters do not match the configuration",
                dir.join(MODEL_FILE).display()
            )
        })?;
    let tokenizer = TextTokenizer::from_dir(dir)?;
    ensure!(
        tokenizer.vocab_size() <= model.bert.vocab_size,
        "{}: the tokenizer has {} tokens but the model only {} embeddings",
        dir.display(),
        tokenizer.vocab_size(),
        model.bert.vocab_size
    );
    Ok((model, tokenizer, meta))
}

/// Rejects weights holding NaN or infinity (a damaged file: they would silently turn every
/// prediction into NaN), naming the first such tensor.
pub fn check_finite(params: &ParamStore, path: &Path) -> Result<()> {
    for t in &params.tensors {
        if let Some((i, v)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            bail!(
                "{}: tensor {} holds a non-finite value ({v}) at element {i}; the file is damaged",
                path.display(),
                t.name
            );
        }
    }
    Ok(())
}

/// Names in `params` that a classifier of this configuration does not have (missing and
/// misshapen tensors are found by `Model::from_params`).
fn unexpected_tensors(
    params: &ParamStore,
    bert: &BertConfig,
    method: &MethodConfig,
) -> Vec<String> {
    let replaced = method
        .variant
        .combines()
        .then(|| names::layer_prefix(method.combine_layer - 1) + ".");
    let mut expected: HashSet<String> = names::bert_tensors(bert)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !replaced.as_deref().is_some_and(|r| name.starts_with(r)))
        .filter(|name| !names::is_pooler(name) || method.pooling == Pooling::Cls)
        .collect();
    if method.variant.combines() {
        expected.insert("comb_tokens".to_string());
        let block = match method.combine_block {
            CombineBlock::Layer => &names::COMBINER_BLOCK_PARTS[..],
            CombineBlock::Plain => &[],
        };
        for part in names::COMBINER_PARTS.iter().chain(block) {
            for kind in ["weight", "bias"] {
                expected.insert(format!("combiner.{part}.{kind}"));
            }
        }
    }
    expected.insert("classifier.weight".to_string());
    expected.insert("classifier.bias".to_string());
    params
        .tensors
        .iter()
        .filter(|t| !expected.contains(&t.name))
        .map(|t| t.name.clone())
        .collect()
}

fn missing_checkpoint_message(dir: &Path) -> String {
    let mut msg = format!(
        "{} is not a corefocus checkpoint (no {META_FILE})",
        dir.display()
    );
    if let Ok((parent, name)) = split_dir(dir) {
        let prefix = format!(".{name}.old-");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&prefix) && e.path().join(META_FILE).is_file() {
                    msg.push_str(&format!(
                        "; an interrupted save left the previous checkpoint in {} (rename it to {})",
                        e.path().display(),
                        dir.display()
                    ));
                }
            }
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Variant;
    use crate::util::{format_utc, remove_stale_temporaries};
    use std::path::PathBuf;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("corefocus-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(utc_timestamp().len(), 20);
    }

    #[test]
    fn replacement_swaps_whole_directory_and_keeps_extra_files() {
        let root = scratch("swap");
        let dir = root.join("run");
        replace_dir_atomically(&dir, |tmp| {
            std::fs::write(tmp.join("model.safetensors"), "v1")?;
            std::fs::write(tmp.join(META_FILE), "m1")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("model.safetensors")).unwrap(),
            "v1"
        );
        std::fs::write(dir.join("metrics.jsonl"), "epoch 1\n").unwrap();
        std::fs::write(dir.join("stale_from_v1"), "x").unwrap();

        replace_dir_atomically(&dir, |tmp| {
            std::fs::write(tmp.join("model.safetensors"), "v2")?;
            std::fs::write(tmp.join("stale_from_v1"), "new")?; // written by fill: not carried
            std::fs::write(tmp.join(META_FILE), "m2")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("model.safetensors")).unwrap(),
            "v2"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
            "epoch 1\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("stale_from_v1")).unwrap(),
            "new"
        );
        // No temporaries left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("run")]);

        // A failing fill leaves the old directory untouched and no temporary.
        let err = replace_dir_atomically(&dir, |tmp| {
            std::fs::write(tmp.join("model.safetensors"), "half")?;
            bail!("disk full")
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert_eq!(
            std::fs::read_to_string(dir.join("model.safetensors")).unwrap(),
            "v2"
        );
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stale_temporaries_are_cleaned_and_interrupted_saves_are_explained() {
        let root = scratch("stale");
        let dir = root.join("run");
        std::fs::create_dir_all(root.join(".run.tmp-1")).unwrap();
        std::fs::create_dir_all(root.join(".run.old-1")).unwrap();
        std::fs::write(root.join(".run.old-1").join(META_FILE), "{}").unwrap();
        // `run` is missing: the .old directory may be the only copy, so it stays.
        let msg = missing_checkpoint_message(&dir);
        assert!(
            msg.contains("interrupted save") && msg.contains(".run.old-1"),
            "{msg}"
        );
        // The next run puts the only complete copy back and drops the incomplete one.
        remove_stale_temporaries(&dir, META_FILE).unwrap();
        assert!(!root.join(".run.tmp-1").exists() && !root.join(".run.old-1").exists());
        assert!(dir.join(META_FILE).is_file());
        // Once `run` is complete, old copies go.
        std::fs::create_dir_all(root.join(".run.old-2")).unwrap();
        remove_stale_temporaries(&dir, META_FILE).unwrap();
        assert!(!root.join(".run.old-2").exists());

        // A crash between the two renames: no `run`, the new version complete in .tmp,
        // the previous one in .old. The new version is restored, the old one removed.
        std::fs::remove_dir_all(&dir).unwrap();
        for (name, version) in [(".run.tmp-3", "new"), (".run.old-3", "old")] {
            std::fs::create_dir_all(root.join(name)).unwrap();
            std::fs::write(root.join(name).join(META_FILE), version).unwrap();
        }
        remove_stale_temporaries(&dir, META_FILE).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(META_FILE)).unwrap(), "new");
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            1,
            "only run is left"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn every_variant_has_exactly_the_expected_tensors() {
        let bert = BertConfig::sized(16, 8, 3, 2, 16);
        for variant in [
            Variant::Bert,
            Variant::P,
            Variant::Pf,
            Variant::C,
            Variant::Pfc,
        ] {
            for pooling in [Pooling::Mean, Pooling::Cls] {
                let mut method = MethodConfig::new(variant, 3);
                method.pooling = pooling;
                if method.validate(3).is_err() {
                    continue; // cls pooling with combining
                }
                let model = Model::random(bert.clone(), method.clone(), 3, 1).unwrap();
                let extra = unexpected_tensors(&model.params, &bert, &method);
                assert!(extra.is_empty(), "{variant:?} {pooling:?}: {extra:?}");
                let mut params = model.params.clone();
                params.add("encoder.layer.9.output.dense.bias", &[8], vec![0.0; 8]);
                assert_eq!(
                    unexpected_tensors(&params, &bert, &method),
                    vec!["encoder.layer.9.output.dense.bias".to_string()]
                );
            }
        }
    }

    #[test]
    fn meta_round_trips_and_is_validated() {
        let train = TrainOptions {
            seed: 7,
            ..TrainOptions::default()
        };
        let meta = CheckpointMeta::new(
            vec!["neg".into(), "pos".into()],
            MethodConfig::new(Variant::Pf, 6),
            256,
            Some(train),
            Some(2),
            Some(0.25),
        );
        let root = scratch("meta");
        let path = root.join(META_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(&meta).unwrap()).unwrap();
        let back = CheckpointMeta::read(&path).unwrap();
        assert_eq!(back, meta);
        assert_eq!(back.train.unwrap().seed, 7);

        let mut bad = meta.clone();
        bad.labels = vec!["a".into(), "a".into()];
        std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
        let err = format!("{:#}", CheckpointMeta::read(&path).unwrap_err());
        assert!(
            err.contains("duplicates") && err.contains(META_FILE),
            "{err}"
        );
        std::fs::write(&path, "{\"format_version\": 1}").unwrap();
        let err = format!("{:#}", CheckpointMeta::read(&path).unwrap_err());
        assert!(err.contains("not a valid corefocus checkpoint"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
