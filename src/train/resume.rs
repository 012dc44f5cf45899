//! Resumable training. `train` saves, at every epoch end and every `--save-every` optimizer
//! steps, everything needed to continue bit-identically into `<out>/resume/`:
//!
//! - `model.safetensors`: the current parameters (not the best epoch's: those are the
//!   checkpoint in `<out>` itself);
//! - `optimizer.safetensors`: the AdamW moments and step count ([`AdamW::state_to_store`]);
//! - `state.json` ([`ResumeState`]): where the loop stands ([`LoopPosition`]: optimizer
//!   step, epoch, position in the epoch's shuffled order, the epoch's running sums, the
//!   epoch records so far and the best epoch), the run's options and a fingerprint of its
//!   encoded training and validation data.
//!
//! Random streams need no saving: the trainer derives each step's dropout / Gumbel seed from
//! `seed + step` and each epoch's shuffle from `seed + epoch`. The directory is replaced as
//! a whole ([`replace_dir_atomically`]) with `state.json` written last, so a crash leaves
//! either the previous state or the new one. `train --resume` reads it back; a finished
//! run removes it.

use super::adamw::{AdamW, AdamWConfig};
use super::options::TrainOptions;
use super::prepare::EncodedSet;
use super::records::LoopPosition;
use crate::model::checkpoint::{read_safetensors, write_safetensors};
use crate::model::ParamStore;
use crate::util::write_atomic;
use crate::util::{field_differences, replace_dir_atomically, utc_timestamp};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const RESUME_DIR: &str = "resume";
pub const STATE_FILE: &str = "state.json";
pub const PARAMS_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const RESUME_FORMAT_VERSION: u32 = 1;

/// Exit status of `corefocus train --stop-after-steps N` (a test-only flag), distinct from
/// the 1 of errors and the 2 of usage errors.
pub const STOPPED_EXIT_CODE: u8 = 3;

/// `<out>/resume/state.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResumeState {
    pub format_version: u32,
    pub loop_position: LoopPosition,
    /// The interrupted run's options; a resumed run must use the same.
    pub options: TrainOptions,
    /// [`data_fingerprint`] of the encoded training and validation sets.
    pub data_fingerprint: String,
    pub created: String,
}

/// FNV-1a over the token ids and class indices of `sets` (lengths included, so the
/// boundaries count): a changed dataset, tokenizer or `--max-len` changes it.
pub fn data_fingerprint(sets: &[&EncodedSet]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |x: u64| {
        for b in x.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for set in sets {
        feed(set.len() as u64);
        for (ids, &label) in set.ids.iter().zip(&set.labels) {
            feed(ids.len() as u64);
            ids.iter().for_each(|&id| feed(id as u64));
            feed(label as u64);
        }
    }
    format!("{h:016x}")
}

/// Options that may differ between an interrupted run and its continuation: they steer
/// the interruption and saving, not what is computed.
const CONTROL_OPTIONS: &[&str] = &[
    "resume",
    "save_every",
    "stop_after_steps",
    "stop_after_trials",
    "inject_nan_at_step",
    "overwrite",
];

/// The `--flags` whose values differ between `saved` and `now` (control flags aside).
pub fn differing_options(saved: &TrainOptions, now: &TrainOptions) -> Result<Vec<String>> {
    let unset = |v: Option<String>| v.unwrap_or_else(|| "(unset)".to_string());
    Ok(field_differences(saved, now, CONTROL_OPTIONS)?
        .into_iter()
        .map(|d| {
            format!(
                "--{} {} (the interrupted run had {})",
                d.key.replace('_', "-"),
                unset(d.right),
                unset(d.left)
            )
        })
        .collect())
}

pub fn resume_dir(out: &Path) -> PathBuf {
    out.join(RESUME_DIR)
}

/// Saves the resume state of a run in `out` atomically (see the module documentation).
pub fn save_resume_state(
    out: &Path,
    params: &ParamStore,
    optimizer: &AdamW,
    state: &ResumeState,
) -> Result<()> {
    replace_dir_atomically(&resume_dir(out), |tmp| {
        write_safetensors(&tmp.join(PARAMS_FILE), params, None)?;
        optimizer.write_state(&tmp.join(OPTIMIZER_FILE))?;
        // Last: a directory with state.json is complete.
        write_atomic(
            &tmp.join(STATE_FILE),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )
    })
    .with_context(|| {
        format!(
            "cannot save the resume state in {}",
            resume_dir(out).display()
        )
    })
}

/// Builds the state.json contents.
pub fn new_state(position: LoopPosition, options: &TrainOptions, fingerprint: &str) -> ResumeState {
    ResumeState {
        format_version: RESUME_FORMAT_VERSION,
        loop_position: position,
        options: options.clone(),
        data_fingerprint: fingerprint.to_string(),
        created: utc_timestamp(),
    }
}

/// Reads and checks `<out>/resume/state.json` (not the tensors: see [`load_resume_tensors`]).
pub fn read_resume_state(out: &Path) -> Result<ResumeState> {
    let dir = resume_dir(out);
    let path = dir.join(STATE_FILE);
    if !path.is_file() {
        bail!(
            "--resume: {} has no resume state ({} is missing): the run finished, or stopped \
             before its first save; train without --resume (with --overwrite to replace the \
             directory)",
            out.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: ResumeState = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid corefocus resume state", path.display()))?;
    ensure!(
        state.format_version == RESUME_FORMAT_VERSION,
        "{}: resume format version {} is not supported (this build reads {RESUME_FORMAT_VERSION})",
        path.display(),
        state.format_version
    );
    let p = &state.loop_position;
    ensure!(
        p.epoch <= state.options.epochs
            && p.records.len() == p.epoch
            && p.best.is_none_or(|b| b < p.records.len())
            && p.best.is_some() != p.records.is_empty(),
        "{}: inconsistent resume state (epoch {}, {} epoch records, best {:?})",
        path.display(),
        p.epoch,
        p.records.len(),
        p.best
    );
    Ok(state)
}

/// Replaces `params` with the saved ones (same names and shapes required) and returns the
/// saved optimizer state.
pub fn load_resume_tensors(
    out: &Path,
    params: &mut ParamStore,
    config: AdamWConfig,
) -> Result<AdamW> {
    let dir = resume_dir(out);
    let params_path = dir.join(PARAMS_FILE);
    let saved = read_safetensors(&params_path, false)?;
    ensure!(
        saved.len() == params.len(),
        "{}: {} tensors, but the model has {}",
        params_path.display(),
        saved.len(),
        params.len()
    );
    for t in params.tensors.iter_mut() {
        let s = saved.get(&t.name).with_context(|| {
            format!("{}: tensor `{}` is missing", params_path.display(), t.name)
        })?;
        ensure!(
            s.shape == t.shape,
            "{}: tensor `{}` has shape {:?}, the model has {:?}",
            params_path.display(),
            t.name,
            s.shape,
            t.shape
        );
        t.data.copy_from_slice(&s.data);
    }
    let opt_path = dir.join(OPTIMIZER_FILE);
    let state = read_safetensors(&opt_path, false)?;
    AdamW::from_store(params, &state, config, &opt_path.display().to_string())
}

/// Removes the resume state of a finished run.
pub fn remove_resume_state(out: &Path) -> Result<()> {
    let dir = resume_dir(out);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::options::LrSpec;

    #[test]
    fn differing_options_name_the_flags() {
        let a = TrainOptions {
            lr: LrSpec::Fixed(1e-4),
            ..TrainOptions::default()
        };
        let mut b = a.clone();
        b.save_every = 7;
        b.resume = true;
        b.overwrite = true;
        assert!(differing_options(&a, &b).unwrap().is_empty());
        b.lr = LrSpec::Fixed(2e-4);
        b.method.keep_ratio = Some(0.5);
        let diff = differing_options(&a, &b).unwrap();
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert_eq!(
            diff,
            vec![
                "--lr 0.0002 (the interrupted run had 0.0001)".to_string(),
                "--keep-ratio 0.5 (the interrupted run had (unset))".to_string(),
            ]
        );
    }

    #[test]
    fn fingerprint_sees_ids_labels_and_boundaries() {
        let set = |ids: Vec<Vec<u32>>, labels: Vec<usize>| EncodedSet {
            ids,
            labels,
            ..EncodedSet::default()
        };
        let a = set(vec![vec![1, 2], vec![3]], vec![0, 1]);
        let f = data_fingerprint(&[&a]);
        assert_eq!(f, data_fingerprint(&[&a.clone()]));
        assert_ne!(
            f,
            data_fingerprint(&[&set(vec![vec![1], vec![2, 3]], vec![0, 1])])
        );
        assert_ne!(
            f,
            data_fingerprint(&[&set(vec![vec![1, 2], vec![3]], vec![1, 1])])
        );
        assert_ne!(f, data_fingerprint(&[&a, &EncodedSet::default()]));
    }
}
