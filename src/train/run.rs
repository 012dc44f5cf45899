//! `corefocus train`: loads the model and the data, chooses the learning rate, runs the
//! loop with checkpoints, curves and resume states as side effects, and evaluates the best
//! checkpoint on the test split.

use super::checkpoint::{load_checkpoint, save_checkpoint, CheckpointMeta, META_FILE};
use super::curves::plot_training_curves;
use super::eval::{eval_logits_with_progress, evaluate};
use super::lr_search::{differing_search_options, read_lr_search, search_lr};
use super::options::{LrSpec, TrainOptions};
use super::outputs::{check_out_dir, prepare_out_dir, report_json, write_run_marker, MetricsLog};
use super::prepare::{
    check_max_len, encode_examples, resolve_splits, subsample, subset_seed, warn_missing_classes,
    EncodedSet, ResolvedSplits,
};
use super::records::{is_stopped_for_test, EpochRecord};
use super::resume;
use super::schedule::LinearSchedule;
use super::train_loop::{new_param_names, train_loop_with, LoopControl, LoopSummary};
use crate::data::tokenize::TextTokenizer;
use crate::data::{load_dataset, Example};
use crate::model::checkpoint::load_hf_checkpoint;
use crate::model::{BertConfig, Model};
use crate::util::{remove_stale_temporaries, write_atomic};
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// What `corefocus train` produced.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The peak learning rate trained with (`--lr`, or what `auto` chose).
    pub lr: f64,
    pub records: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    /// Test-set evaluation of the best checkpoint, when the dataset has a test split.
    pub test: Option<(f64, f64, f64)>,
}

/// `corefocus train`: fine-tunes, keeps the best checkpoint in `--out`, evaluates it on
/// the test split if there is one.
pub fn run_train(opts: &TrainOptions) -> Result<TrainOutcome> {
    // Pinned threads help sparse inference passes, not training's (see the function).
    crate::kernels::affinity::leave_threads_free();
    opts.validate()?;
    opts.precision.check_available()?;
    let start = read_resume_or_check_out(opts)?;
    // `--model` may name a hub model: resolved once to a local directory (the options
    // keep what the user wrote, so `--resume` compares like with like).
    let model_dir = crate::model::hub::resolve_model(&opts.model)?;
    check_model_fits(opts, &model_dir)?;
    let splits = load_splits(opts)?;
    let labels = splits.labels.clone();

    let tokenizer = TextTokenizer::from_dir(&model_dir)?;
    let (bert, bert_params) = load_hf_checkpoint(&model_dir)?;
    super::checkpoint::check_finite(&bert_params, &model_dir.join("model.safetensors"))?;
    check_max_len(opts.max_len, &bert, &model_dir.join("config.json"))?;
    ensure!(
        tokenizer.vocab_size() <= bert.vocab_size,
        "{}: the tokenizer has {} tokens but the model only {} embeddings",
        model_dir.display(),
        tokenizer.vocab_size(),
        bert.vocab_size
    );
    let method = opts.method.to_config(&bert)?;
    let build = || {
        Model::from_bert_params(
            bert.clone(),
            bert_params.clone(),
            method.clone(),
            labels.len(),
            opts.seed,
        )
        .with_context(|| format!("cannot build the classifier from {}", model_dir.display()))
    };
    let mut model = build()?;

    let mut train = encode_examples(&tokenizer, &splits.train, &labels, opts.max_len, "train")?;
    let dev = encode_examples(&tokenizer, &splits.dev, &labels, opts.max_len, "validation")?;
    if let Some(dir) = &opts.distill_from {
        train.teacher = teacher_logits(dir, &splits.train, &labels, opts.eval_batch)?;
    }
    let steps = train.len().div_ceil(opts.batch_size) * opts.epochs;
    eprintln!(
        "corefocus train: variant {}, {} train / {} validation ({}) / {} test examples, {} labels; \
         {} steps, warm-up {}",
        model.method.variant.name(),
        train.len(),
        dev.len(),
        splits.dev_source,
        splits.test.as_ref().map_or(0, |t| t.len()),
        labels.len(),
        steps,
        LinearSchedule::new(1.0, steps as u64, opts.warmup).warmup_steps
    );

    let (lr, summary) = fit(
        opts,
        &build,
        &mut model,
        &tokenizer,
        (&train, &dev),
        &labels,
        start,
    )?;
    drop(model);

    let best = &summary.records[summary.best];
    let test = match &splits.test {
        Some(examples) => Some(test_best_checkpoint(opts, examples, best.epoch)?),
        None => None,
    };
    // Finished: nothing left to resume.
    resume::remove_resume_state(&opts.out)?;
    let reports = if test.is_some() {
        "metrics.jsonl, training_curves.svg and test_report.json"
    } else {
        "metrics.jsonl and training_curves.svg"
    };
    eprintln!(
        "corefocus train: done; the best checkpoint (epoch {}, val loss {:.4}) is in {}, with {reports}",
        best.epoch,
        best.val_loss,
        opts.out.display()
    );
    Ok(TrainOutcome {
        lr,
        records: summary.records.clone(),
        best_epoch: best.epoch,
        best_val_loss: best.val_loss,
        test,
    })
}

/// Trains `model` (fresh, or from the resume state) with the run's outputs as side
/// effects: the best checkpoint, `metrics.jsonl`, the curves and resume states. Returns the
/// learning rate used and the loop's summary.
fn fit(
    opts: &TrainOptions,
    build: &dyn Fn() -> Result<Model>,
    model: &mut Model,
    tokenizer: &TextTokenizer,
    (train, dev): (&EncodedSet, &EncodedSet),
    labels: &[String],
    start: Start,
) -> Result<(f64, LoopSummary)> {
    let steps = train.len().div_ceil(opts.batch_size) * opts.epochs;
    let fingerprint = resume::data_fingerprint(&[train, dev]);
    let mut metrics = MetricsLog::new(opts.out.join("metrics.jsonl"));
    let mut kept: Option<(usize, f64)> = None;
    let mut control = LoopControl {
        start: None,
        save_every: opts.save_every,
        stop_after_steps: opts.stop_after_steps,
        inject_nan_at_step: opts.inject_nan_at_step,
    };
    let data_must_match = |saved: &str| {
        ensure!(
            saved == fingerprint,
            "--resume: the encoded training or validation data differ from those of the \
             interrupted run in {} (dataset, tokenizer or --max-len changed?)",
            opts.out.display()
        );
        Ok(())
    };
    if let Start::Saved(state) = start {
        data_must_match(&state.data_fingerprint)?;
        let optimizer =
            resume::load_resume_tensors(&opts.out, &mut model.params, opts.adamw_config())?;
        let position = state.loop_position;
        eprintln!(
            "corefocus train: resuming at epoch {}, optimizer step {} of {steps}",
            (position.epoch + 1).min(opts.epochs),
            position.step
        );
        kept = metrics.restore(&position.records, position.best)?;
        control.start = Some((position, optimizer));
        write_run_marker(&opts.out)?;
    } else if let Start::AfterSearch = start {
        let search = read_lr_search(&opts.out);
        data_must_match(
            search
                .and_then(|s| s.data_fingerprint)
                .as_deref()
                .unwrap_or(""),
        )?;
        eprintln!("corefocus train: resuming the --lr auto search, then training from step 0");
        write_run_marker(&opts.out)?;
    } else {
        prepare_out_dir(&opts.out, opts.overwrite)?;
    }
    let pad_id = tokenizer.pad_id();
    let lr = choose_lr(opts, build, (train, dev), &fingerprint, labels, pad_id)?;
    let mut settings = opts.loop_settings(lr);
    settings.new_params = new_param_names(model);
    let result = train_loop_with(
        model,
        train,
        dev,
        labels,
        pad_id,
        &settings,
        control,
        &mut |m, rec, _| {
            if rec.best {
                let meta = CheckpointMeta::new(
                    labels.to_vec(),
                    m.method.clone(),
                    opts.max_len,
                    Some(opts.clone()),
                    Some(rec.epoch),
                    Some(rec.val_loss),
                );
                save_checkpoint(&opts.out, m, tokenizer, &meta)?;
                kept = Some((rec.epoch, rec.val_loss));
            }
            metrics.append(rec)?;
            // The curves are a convenience: a plotting failure must not stop training.
            let (log, curves) = (
                opts.out.join("metrics.jsonl"),
                opts.out.join("training_curves.svg"),
            );
            if let Err(e) = plot_training_curves(&log, &curves) {
                eprintln!("warning: {e:#}");
            }
            Ok(())
        },
        &mut |m, position, optimizer| {
            let state = resume::new_state(position.clone(), opts, &fingerprint);
            resume::save_resume_state(&opts.out, &m.params, optimizer, &state)
        },
    );
    let summary = result.map_err(|e| match kept {
        _ if is_stopped_for_test(&e) => e,
        _ if super::stop::is_stopped_on_request(&e) => e.context(format!(
            "training stopped; the resume state is saved in {} (continue with --resume){}",
            resume::resume_dir(&opts.out).display(),
            kept.map_or(String::new(), |(epoch, loss)| format!(
                ", the best checkpoint so far (epoch {epoch}, val loss {loss:.4}) is kept in {}",
                opts.out.display()
            ))
        )),
        Some((epoch, loss)) => e.context(format!(
            "training stopped; the last good checkpoint (epoch {epoch}, val loss {loss:.4}) is kept in {}",
            opts.out.display()
        )),
        None => e.context("training stopped before any checkpoint was saved"),
    })?;
    Ok((lr, summary))
}

/// Whether `train --resume` with `opts` has something to continue in `--out`, left by a
/// run with the same options (`options_to_continue`).
pub fn has_resumable_run(opts: &TrainOptions) -> bool {
    interrupted_run(&opts.out)
        .and_then(|left| options_to_continue(&left, opts))
        .is_ok_and(|differing| differing.is_empty())
}

/// What an interrupted run left in `--out` to continue from.
enum Interrupted {
    /// Its last resume state.
    State(Box<resume::ResumeState>),
    /// Only its `--lr auto` search (it stopped in the search, or before its first save),
    /// with the options it ran with.
    Search(Box<TrainOptions>),
}

/// What `out` holds to continue from; an error says why there is nothing (or nothing
/// readable).
fn interrupted_run(out: &Path) -> Result<Interrupted> {
    let no_state = !resume::resume_dir(out).join(resume::STATE_FILE).is_file();
    if no_state && !out.join(META_FILE).is_file() {
        if let Some(options) = read_lr_search(out).and_then(|s| s.options) {
            return Ok(Interrupted::Search(Box::new(options)));
        }
    }
    Ok(Interrupted::State(Box::new(resume::read_resume_state(
        out,
    )?)))
}

/// The `--flags` in which `opts` differs from the interrupted run (control flags aside; a
/// search over another grid still lends the trials of the rates it shares).
fn options_to_continue(left: &Interrupted, opts: &TrainOptions) -> Result<Vec<String>> {
    match left {
        Interrupted::State(state) => resume::differing_options(&state.options, opts),
        Interrupted::Search(saved) => differing_search_options(saved, opts),
    }
}

/// How a run starts.
enum Start {
    /// A new run (`--out` is checked; nothing is removed before the inputs load).
    Fresh,
    /// `--resume` of a run that stopped before its first resume state (in its `--lr auto`
    /// search, or in the first steps after it): training starts over, the finished trials
    /// in `lr_search.json` are taken over.
    AfterSearch,
    /// `--resume` from the saved state.
    Saved(Box<resume::ResumeState>),
}

/// With `--resume`, what the interrupted run left (its options must equal these); without,
/// checks that `--out` can take a new run.
fn read_resume_or_check_out(opts: &TrainOptions) -> Result<Start> {
    if !opts.resume {
        check_out_dir(&opts.out, opts.overwrite)?;
        return Ok(Start::Fresh);
    }
    // A save interrupted by a crash is completed or undone first, so the state read is
    // the last one saved and no temporary copy lingers in --out.
    remove_stale_temporaries(&opts.out, META_FILE)?;
    remove_stale_temporaries(&resume::resume_dir(&opts.out), resume::STATE_FILE)?;
    let left = interrupted_run(&opts.out)?;
    let differing = options_to_continue(&left, opts)?;
    ensure!(
        differing.is_empty(),
        "--resume: options differ from those of the interrupted run in {}: {}; pass the same options",
        opts.out.display(),
        differing.join("; ")
    );
    Ok(match left {
        Interrupted::State(state) => Start::Saved(state),
        Interrupted::Search(_) => Start::AfterSearch,
    })
}

/// The dataset's train / validation / test splits as this run uses them: `--max-*-examples`
/// subsets, checked for two labels and a non-empty validation set.
fn load_splits(opts: &TrainOptions) -> Result<ResolvedSplits> {
    let ds = load_dataset(&opts.data, &opts.read_options())
        .with_context(|| format!("cannot load the dataset {}", opts.data.display()))?;
    let mut splits = resolve_splits(ds, opts.seed);
    splits.train = subsample(
        splits.train,
        opts.max_train_examples,
        subset_seed(opts.seed, "train"),
    );
    splits.dev = subsample(
        splits.dev,
        opts.max_eval_examples,
        subset_seed(opts.seed, "dev"),
    );
    let test_seed = subset_seed(opts.seed, "test");
    splits.test = splits
        .test
        .map(|t| subsample(t, opts.max_eval_examples, test_seed));
    ensure!(
        splits.labels.len() >= 2,
        "{}: need at least 2 labels, found {}",
        opts.data.display(),
        splits.labels.len()
    );
    ensure!(
        !splits.dev.is_empty(),
        "{}: the validation set is empty: there is no dev split, and no class of the training \
         split has the 2 examples needed to hold one out",
        opts.data.display()
    );
    warn_missing_classes(&splits.train, &splits.labels);
    Ok(splits)
}

/// The peak learning rate: `--lr`, or what `--lr auto` chooses. The search is saved in
/// `<out>/lr_search.json` as it goes; `--resume` takes over its finished trials (all of
/// them when it was complete) if they were made with the same options and data.
fn choose_lr(
    opts: &TrainOptions,
    build: &dyn Fn() -> Result<Model>,
    (train, dev): (&EncodedSet, &EncodedSet),
    fingerprint: &str,
    labels: &[String],
    pad_id: u32,
) -> Result<f64> {
    if let LrSpec::Fixed(lr) = opts.lr {
        return Ok(lr);
    }
    let earlier =
        read_lr_search(&opts.out).filter(|s| opts.resume && s.reusable_by(opts, fingerprint));
    let search = match earlier {
        Some(search) if search.is_complete_for(opts) => search,
        earlier => search_lr(opts, earlier, build, (train, dev), labels, pad_id)?,
    };
    let chosen = search
        .chosen
        .context("--lr auto: the search chose no rate")?;
    eprintln!(
        "corefocus train: --lr auto chose {chosen:e} ({})",
        search.summary()
    );
    Ok(chosen)
}

/// Evaluates the saved checkpoint (not the model in memory: the best epoch may be an
/// earlier one) on the test examples; prints the table, writes `test_report.json`, and
/// returns (loss, accuracy, macro-F1).
fn test_best_checkpoint(
    opts: &TrainOptions,
    examples: &[Example],
    best_epoch: usize,
) -> Result<(f64, f64, f64)> {
    let (best_model, best_tok, meta) = load_checkpoint(&opts.out)?;
    let test = encode_examples(&best_tok, examples, &meta.labels, meta.max_len, "test")?;
    let result = evaluate(
        &best_model,
        &test,
        &meta.labels,
        best_tok.pad_id(),
        opts.eval_batch,
        Some("test"),
    );
    println!("test (best checkpoint, epoch {best_epoch}):");
    println!("{}", result.report.to_table());
    let json = report_json("test", &opts.out, &opts.data, &result, &meta.labels)?;
    write_atomic(
        &opts.out.join("test_report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok((result.loss, result.report.accuracy, result.report.macro_f1))
}

/// `--distill-from`: the teacher checkpoint's logits on `examples` (`[n, classes]`),
/// tokenized as the teacher was trained.
fn teacher_logits(
    dir: &Path,
    examples: &[Example],
    labels: &[String],
    eval_batch: usize,
) -> Result<Vec<f32>> {
    let (teacher, tok, meta) =
        load_checkpoint(dir).with_context(|| format!("--distill-from {}", dir.display()))?;
    ensure!(
        meta.labels == labels,
        "--distill-from {}: the teacher's labels ({}) are not this dataset's ({})",
        dir.display(),
        meta.labels.join(", "),
        labels.join(", ")
    );
    let set = encode_examples(&tok, examples, labels, meta.max_len, "train")?;
    eprintln!(
        "corefocus train: teacher {} ({}) labels the {} training examples",
        dir.display(),
        teacher.method.variant.name(),
        set.len()
    );
    let shown = Some("teacher logits");
    Ok(eval_logits_with_progress(
        &teacher,
        &set.ids,
        tok.pad_id(),
        eval_batch,
        shown,
    ))
}

/// Checks `--max-len` and the method flags against the config.json of the (resolved)
/// model directory before the dataset is read (a missing or broken config.json is
/// reported later, when it loads).
fn check_model_fits(opts: &TrainOptions, model_dir: &Path) -> Result<()> {
    ensure!(
        model_dir.is_dir(),
        "checkpoint directory {} does not exist or is not a directory",
        model_dir.display()
    );
    let config_path = model_dir.join("config.json");
    if !config_path.is_file() {
        return Ok(());
    }
    let bert = BertConfig::from_file(&config_path)?;
    check_max_len(opts.max_len, &bert, &config_path)?;
    opts.method.to_config(&bert).map(|_| ())
}
