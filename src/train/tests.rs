//! Tests of the training options, data preparation and the loop (with a tiny model).

use super::adamw::AdamWConfig;
use super::options::{MethodArgs, MethodDefaults, TrainOptions, DEFAULT_LR_GRID};
use super::outputs::{prepare_out_dir, MetricsLog};
use super::prepare::{subsample, EncodedSet};
use super::records::{is_stopped_for_test, EpochRecord};
use super::*;
use crate::kernels::matmul::Precision;
use crate::model::{
    Batch, BertConfig, CombineInit, CombinePooling, LengthRange, MethodConfig, Mode, Model,
    ParamStore, Variant,
};
use crate::rng::Rng;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    opts: TrainOptions,
}

#[test]
fn cli_defaults_match_default_impl_and_method_md() {
    let cli = Cli::try_parse_from(["t", "--model", "m", "--data", "d", "--out", "o"]).unwrap();
    let expected = TrainOptions {
        model: "m".into(),
        data: "d".into(),
        out: "o".into(),
        ..TrainOptions::default()
    };
    assert_eq!(cli.opts, expected);
    assert_eq!(expected.lr, LrSpec::Auto);
    assert_eq!(expected.lr_grid, DEFAULT_LR_GRID);
    assert_eq!(expected.method.defaults, MethodDefaults::Recommended);
    assert_eq!(expected.batch_size, 16);
    assert_eq!(expected.warmup, 0.1);
    assert_eq!(expected.clip, 1.0);
    assert_eq!(expected.seed, 42);

    let cli = Cli::try_parse_from([
        "t",
        "--model",
        "m",
        "--data",
        "d",
        "--out",
        "o",
        "--variant",
        "PFC",
        "--keep-ratio",
        "0.7",
        "--combine-layer",
        "4",
        "--combine-init",
        "random",
        "--batch",
        "8",
    ])
    .unwrap();
    assert_eq!(cli.opts.method.variant, Variant::Pfc);
    assert_eq!(cli.opts.method.keep_ratio, Some(0.7));
    assert_eq!(cli.opts.method.combine_init, Some(CombineInit::Random));
    assert_eq!(cli.opts.batch_size, 8);
    assert!(Cli::try_parse_from([
        "t",
        "--model",
        "m",
        "--data",
        "d",
        "--out",
        "o",
        "--variant",
        "x"
    ])
    .is_err());
}

#[test]
fn method_flags_map_onto_config_and_misplaced_flags_are_errors() {
    let bert = BertConfig::minilm_l6();
    let args = MethodArgs {
        variant: Variant::Pfc,
        keep_ratio: Some(0.5),
        combine_layer: Some(4),
        combine_tokens: Some(16),
        ..MethodArgs::default()
    };
    let m = args.to_config(&bert).unwrap();
    assert_eq!(
        (m.keep_ratio, m.combine_layer, m.combine_tokens),
        (0.5, 4, 16)
    );
    assert_eq!(m.classifier_dropout, bert.hidden_dropout_prob);

    let defaults = MethodArgs::default().to_config(&bert).unwrap();
    assert_eq!(defaults, {
        let mut d = MethodConfig::new(Variant::Bert, 6);
        d.classifier_dropout = bert.hidden_dropout_prob;
        d
    });

    let err = MethodArgs {
        variant: Variant::P,
        combine_layer: Some(3),
        ..MethodArgs::default()
    }
    .to_config(&bert)
    .unwrap_err();
    assert!(err.to_string().contains("--combine-layer"), "{err}");
    let err = MethodArgs {
        keep_ratio: Some(0.5),
        ..MethodArgs::default()
    }
    .to_config(&bert)
    .unwrap_err();
    assert!(err.to_string().contains("--keep-ratio"), "{err}");
    // MethodConfig::validate still runs: layer 7 of a 6-layer model.
    let err = MethodArgs {
        variant: Variant::C,
        combine_layer: Some(7),
        ..MethodArgs::default()
    }
    .to_config(&bert)
    .unwrap_err();
    assert!(err.to_string().contains("--combine-layer 7"), "{err}");

    // Combining: the recommended recipe unless the paper's defaults are asked for.
    let pfc = MethodArgs {
        variant: Variant::Pfc,
        ..MethodArgs::default()
    };
    let m = pfc.to_config(&bert).unwrap();
    assert_eq!(
        m,
        MethodConfig {
            classifier_dropout: bert.hidden_dropout_prob,
            ..MethodConfig::recommended(Variant::Pfc, &bert)
        }
    );
    let paper = MethodArgs {
        defaults: MethodDefaults::Paper,
        ..pfc.clone()
    };
    assert_eq!(
        paper.to_config(&bert).unwrap(),
        MethodConfig {
            classifier_dropout: bert.hidden_dropout_prob,
            ..MethodConfig::new(Variant::Pfc, 6)
        }
    );
    let flags = MethodArgs {
        combine_pooling: Some(CombinePooling::Mean),
        combine_noise: Some(false),
        ..paper
    };
    let m = flags.to_config(&bert).unwrap();
    assert_eq!(
        (m.combine_pooling, m.combine_noise),
        (CombinePooling::Mean, false)
    );
    let err = MethodArgs {
        combine_pooling: Some(CombinePooling::Counts),
        ..MethodArgs::default()
    }
    .to_config(&bert)
    .unwrap_err();
    assert!(err.to_string().contains("--combine-pooling"), "{err}");

    // Pruning skips short examples by default; 0 is the paper's rule; bert has no such flag.
    let pf = MethodArgs {
        variant: Variant::Pf,
        ..MethodArgs::default()
    };
    assert_eq!(pf.to_config(&bert).unwrap().prune_min_len, 64);
    let pf_paper = MethodArgs {
        defaults: MethodDefaults::Paper,
        ..pf.clone()
    };
    assert_eq!(pf_paper.to_config(&bert).unwrap().prune_min_len, 0);
    let pf_flag = MethodArgs {
        prune_min_len: Some(0),
        ..pf
    };
    assert_eq!(pf_flag.to_config(&bert).unwrap().prune_min_len, 0);
    let err = MethodArgs {
        prune_min_len: Some(10),
        ..MethodArgs::default()
    }
    .to_config(&bert)
    .unwrap_err();
    assert!(err.to_string().contains("--prune-min-len"), "{err}");

    // Assignment heads: the recipe's logit scale becomes 1/sqrt(d / heads) unless given;
    // heads must divide d; bert has no such flag.
    let heads = |h: usize, scale: Option<f32>| MethodArgs {
        variant: Variant::C,
        combine_heads: Some(h),
        combine_scale: scale,
        ..MethodArgs::default()
    };
    let m = heads(12, None).to_config(&bert).unwrap();
    assert_eq!(m.combine_heads, 12);
    assert_eq!(m.combine_scale, 1.0 / 32f32.sqrt());
    assert_eq!(
        heads(12, Some(0.5)).to_config(&bert).unwrap().combine_scale,
        0.5
    );
    let err = heads(5, None).to_config(&bert).unwrap_err();
    assert!(err.to_string().contains("--combine-heads 5"), "{err}");
    let err = heads(0, None).to_config(&bert).unwrap_err();
    assert!(err.to_string().contains("--combine-heads"), "{err}");
    let err = MethodArgs {
        combine_heads: Some(2),
        ..MethodArgs::default()
    }
    .to_config(&bert)
    .unwrap_err();
    assert!(err.to_string().contains("--combine-heads"), "{err}");
}

#[test]
fn subsample_is_seeded_and_keeps_order() {
    let items: Vec<usize> = (0..100).collect();
    let a = subsample(items.clone(), Some(10), 7);
    let b = subsample(items.clone(), Some(10), 7);
    assert_eq!(a, b);
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert_ne!(a, subsample(items.clone(), Some(10), 8));
    assert_eq!(subsample(items.clone(), None, 7), items);
    assert_eq!(subsample(items.clone(), Some(1000), 7), items);
}

#[test]
fn out_dir_preparation_refuses_foreign_directories() {
    let root = std::env::temp_dir().join(format!("corefocus-train-prep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let out = root.join("run");
    prepare_out_dir(&out, false).unwrap();
    assert!(out.is_dir());
    prepare_out_dir(&out, false).unwrap(); // holding only the marker counts as empty

    // Somebody else's directory.
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = prepare_out_dir(&out, false).unwrap_err().to_string();
    assert!(err.contains("--overwrite"), "{err}");
    let err = prepare_out_dir(&out, true).unwrap_err().to_string();
    assert!(err.contains("refusing"), "{err}");
    assert!(out.join("notes.txt").exists());

    // Issue 16: a metrics.jsonl is no proof of ownership; only the marker is.
    std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
    let err = prepare_out_dir(&out, true).unwrap_err().to_string();
    assert!(
        err.contains(".corefocus-run") && err.contains("refusing"),
        "{err}"
    );
    assert!(out.join("notes.txt").exists() && out.join("metrics.jsonl").exists());

    // A run's directory: --overwrite removes the run's own files, never the user's.
    std::fs::remove_dir_all(&out).unwrap();
    prepare_out_dir(&out, false).unwrap();
    assert!(out.join(".corefocus-run").is_file());
    for f in [
        "corefocus.json",
        "metrics.jsonl",
        "resume/state.json",
        ".resume.tmp-7/x",
    ] {
        std::fs::create_dir_all(out.join(f).parent().unwrap()).unwrap();
        std::fs::write(out.join(f), "{}").unwrap();
    }
    std::fs::write(out.join("thesis.tex"), "mine").unwrap();
    prepare_out_dir(&out, true).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, [".corefocus-run", "thesis.tex"]);
    // Without anything of the user's, the directory is removed and made anew.
    std::fs::remove_file(out.join("thesis.tex")).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{}").unwrap();
    prepare_out_dir(&out, true).unwrap();
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    std::fs::remove_dir_all(&root).unwrap();
}

/// A bag-of-words linear classifier: logits = mean over the tokens of `emb[token]` +
/// bias. Its backward is exact, so the loop can be checked end to end.
struct BagOfWords {
    params: ParamStore,
    classes: usize,
    /// Make the loss non-finite from this optimizer step on (forward count).
    poison_after: Option<usize>,
    forwards: std::cell::Cell<usize>,
}

impl BagOfWords {
    fn new(vocab: usize, classes: usize) -> Self {
        let mut params = ParamStore::new();
        params.add("emb.weight", &[vocab, classes], vec![0.0; vocab * classes]);
        params.add("classifier.bias", &[classes], vec![0.0; classes]);
        BagOfWords {
            params,
            classes,
            poison_after: None,
            forwards: std::cell::Cell::new(0),
        }
    }
}

impl Trainable for BagOfWords {
    type Tape = Batch;
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }
    fn num_labels(&self) -> usize {
        self.classes
    }
    fn logits(&self, batch: &Batch, mode: Mode, record: bool) -> (Vec<f32>, Option<Batch>) {
        let c = self.classes;
        let emb = self.params.data(0);
        let bias = self.params.data(1);
        let mut out = vec![0.0; batch.batch * c];
        for b in 0..batch.batch {
            let len = batch.lengths[b];
            for &tok in &batch.ids[b * batch.seq..b * batch.seq + len] {
                for k in 0..c {
                    out[b * c + k] += emb[tok as usize * c + k] / len as f32;
                }
            }
            for k in 0..c {
                out[b * c + k] += bias[k];
            }
        }
        if matches!(mode, Mode::Train { .. }) {
            let n = self.forwards.get() + 1;
            self.forwards.set(n);
            if self.poison_after.is_some_and(|p| n > p) {
                out[0] = f32::NAN;
            }
        }
        (out, record.then(|| batch.clone()))
    }
    fn backprop(&self, batch: &Batch, dlogits: &[f32], grads: &mut ParamStore) {
        let c = self.classes;
        for b in 0..batch.batch {
            let len = batch.lengths[b];
            for &tok in &batch.ids[b * batch.seq..b * batch.seq + len] {
                for k in 0..c {
                    grads.data_mut(0)[tok as usize * c + k] += dlogits[b * c + k] / len as f32;
                }
            }
            for k in 0..c {
                grads.data_mut(1)[k] += dlogits[b * c + k];
            }
        }
    }
}

/// Documents of random filler tokens 3..20 plus one signal token: 1 for class 0, 2 for
/// class 1 (ids shaped like tokenizer output: 101-like start and end markers omitted).
fn toy_set(n: usize, seed: u64) -> EncodedSet {
    let mut rng = Rng::new(seed);
    let mut set = EncodedSet::default();
    for _ in 0..n {
        let label = rng.below(2);
        let len = 3 + rng.below(6);
        let mut ids: Vec<u32> = (0..len).map(|_| 3 + rng.below(17) as u32).collect();
        ids[rng.below(len)] = 1 + label as u32;
        set.ids.push(ids);
        set.labels.push(label);
    }
    set
}

fn toy_settings() -> LoopSettings {
    LoopSettings {
        epochs: 4,
        batch_size: 8,
        lr: 0.5,
        new_lr_scale: 1.0,
        new_params: Vec::new(),
        distill: None,
        warmup: 0.1,
        adamw: AdamWConfig::default(),
        clip: 1.0,
        seed: 3,
        eval_batch: 5,
        progress: false,
        precision: Precision::F32,
    }
}

#[test]
fn loop_learns_toy_task_deterministically_and_reports_each_epoch() {
    let labels = vec!["neg".to_string(), "pos".to_string()];
    let (train, dev) = (toy_set(200, 1), toy_set(60, 2));
    let settings = toy_settings();
    let run = || {
        let mut model = BagOfWords::new(20, 2);
        let mut seen = Vec::new();
        let summary = train_loop(
            &mut model,
            &train,
            &dev,
            &labels,
            0,
            &settings,
            &mut |_, rec, val| {
                assert_eq!(val.predictions.len(), 60);
                seen.push(rec.clone());
                Ok(())
            },
        )
        .unwrap();
        (model.params.tensors[0].data.clone(), summary, seen)
    };
    let (params_a, summary, seen) = run();
    let (params_b, _, _) = run();
    assert_eq!(params_a, params_b, "same seed, same parameters");

    assert_eq!(summary.steps, 4 * 25);
    assert_eq!(seen, summary.records);
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(seen[0].best);
    let last = &seen[3];
    assert!(
        last.val_accuracy > 0.95,
        "val accuracy {}",
        last.val_accuracy
    );
    assert!(last.train_loss < seen[0].train_loss);
    assert!(
        last.lr > 0.0 && last.lr < 0.5 / 80.0 + 1e-12,
        "final lr {}",
        last.lr
    );
    // `best` marks exactly the running minima of the validation loss.
    let mut min = f64::INFINITY;
    for r in &seen {
        assert_eq!(r.best, r.val_loss < min, "epoch {}", r.epoch);
        min = min.min(r.val_loss);
    }
    assert_eq!(seen[summary.best].val_loss, min);
}

#[test]
fn loop_stops_on_non_finite_loss_without_touching_parameters() {
    let labels = vec!["neg".to_string(), "pos".to_string()];
    let (train, dev) = (toy_set(40, 1), toy_set(10, 2));
    let mut model = BagOfWords::new(20, 2);
    model.poison_after = Some(7); // 5 steps per epoch: fails in epoch 2, step 8
    let mut epochs_reported = 0;
    let mut snapshot = None;
    let err = train_loop(
        &mut model,
        &train,
        &dev,
        &labels,
        0,
        &toy_settings(),
        &mut |m, _, _| {
            epochs_reported += 1;
            snapshot = Some(m.params.tensors[0].data.clone());
            Ok(())
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("non-finite training loss")
            && err.contains("epoch 2")
            && err.contains("step 8"),
        "{err}"
    );
    assert_eq!(epochs_reported, 1);
    // Steps 6 and 7 ran after the epoch-1 snapshot; step 8 updated nothing (no NaNs).
    assert_ne!(snapshot.unwrap(), model.params.tensors[0].data);
    assert!(model.params.tensors[0].data.iter().all(|x| x.is_finite()));
}

#[test]
fn resuming_from_any_step_reaches_the_same_parameters() {
    let labels = vec!["neg".to_string(), "pos".to_string()];
    // 23 examples, batch 8: the last batch of each epoch is short.
    let (train, dev) = (toy_set(23, 1), toy_set(10, 2));
    let settings = toy_settings();
    let (mut records_full, mut full) = (Vec::new(), BagOfWords::new(20, 2));
    train_loop(
        &mut full,
        &train,
        &dev,
        &labels,
        0,
        &settings,
        &mut |_, r, _| {
            records_full.push(r.clone());
            Ok(())
        },
    )
    .unwrap();
    // 3 steps an epoch, loss windows of 10 steps: each epoch closes its window; the
    // fourth also has one ending at step 10.
    let windows: Vec<Vec<u64>> = records_full
        .iter()
        .map(|r| r.loss_curve.iter().map(|p| p.step).collect())
        .collect();
    assert_eq!(windows, [vec![3], vec![6], vec![9], vec![10, 12]]);
    for r in &records_full[..3] {
        assert_eq!(r.loss_curve[0].loss, r.train_loss, "one window = the epoch");
    }
    // Epoch 4: windows of 8 (step 10) and 8 + 7 examples; their weighted mean is the
    // epoch's loss.
    let (a, b) = (records_full[3].loss_curve[0], records_full[3].loss_curve[1]);
    assert!(((a.loss * 8.0 + b.loss * 15.0) / 23.0 - records_full[3].train_loss).abs() < 1e-12);
    let total = 4 * 3;
    for stop in 1..=total {
        // Run until `stop`, keeping what `on_save` is handed there.
        let mut first = BagOfWords::new(20, 2);
        let mut saved = None;
        let control = LoopControl {
            stop_after_steps: Some(stop),
            save_every: 2,
            ..LoopControl::default()
        };
        let err = train_loop_with(
            &mut first,
            &train,
            &dev,
            &labels,
            0,
            &settings,
            control,
            &mut |_, _, _| Ok(()),
            &mut |m, pos, opt| {
                saved = Some((m.params.clone(), pos.clone(), opt.clone()));
                Ok(())
            },
        )
        .unwrap_err();
        assert!(is_stopped_for_test(&err), "{err}");
        let (params, position, opt) = saved.unwrap();
        assert_eq!(position.step, stop);
        // Continue in a fresh model from the saved state.
        let mut second = BagOfWords::new(20, 2);
        second.params = params;
        let mut records = position.records.clone();
        let control = LoopControl {
            start: Some((position, opt)),
            ..LoopControl::default()
        };
        let summary = train_loop_with(
            &mut second,
            &train,
            &dev,
            &labels,
            0,
            &settings,
            control,
            &mut |_, r, _| {
                records.push(r.clone());
                Ok(())
            },
            &mut |_, _, _| Ok(()),
        )
        .unwrap();
        assert_eq!(summary.steps, total);
        for (a, b) in full.params.tensors.iter().zip(&second.params.tensors) {
            assert!(a.data == b.data, "stop {stop}: {} differs", a.name);
        }
        let strip = |r: &EpochRecord| {
            (
                r.epoch,
                r.step,
                r.train_loss,
                r.val_loss,
                r.grad_norm,
                r.lr,
                r.best,
                r.loss_curve.clone(),
            )
        };
        assert_eq!(
            records.iter().map(strip).collect::<Vec<_>>(),
            records_full.iter().map(strip).collect::<Vec<_>>(),
            "stop {stop}"
        );
    }
}

#[test]
fn metrics_log_rewrites_whole_file() {
    let dir = std::env::temp_dir().join(format!("corefocus-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut log = MetricsLog::new(dir.join("metrics.jsonl"));
    log.append(&serde_json::json!({"epoch": 1})).unwrap();
    log.append(&serde_json::json!({"epoch": 2})).unwrap();
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(text, "{\"epoch\":1}\n{\"epoch\":2}\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With every example within `prune_min_len`, pf trains exactly as bert and pfc exactly
/// as c (dropout and Gumbel noise included): nothing is pruned, so the experiment runner
/// may treat such cells as the same run (`MethodConfig::effective`).
#[test]
fn pruning_variants_within_prune_min_len_train_exactly_as_their_unpruned_twins() {
    let labels = vec!["neg".to_string(), "pos".to_string()];
    let (train, dev) = (toy_set(40, 1), toy_set(10, 2));
    let longest = train
        .ids
        .iter()
        .chain(&dev.ids)
        .map(Vec::len)
        .max()
        .unwrap();
    let run = |method: MethodConfig| {
        let mut model = Model::random(BertConfig::sized(24, 8, 3, 2, 16), method, 2, 5).unwrap();
        let settings = LoopSettings {
            epochs: 1,
            lr: 1e-3,
            ..toy_settings()
        };
        train_loop(
            &mut model,
            &train,
            &dev,
            &labels,
            0,
            &settings,
            &mut |_, _, _| Ok(()),
        )
        .unwrap();
        model
            .params
            .tensors
            .iter()
            .map(|t| t.data.clone())
            .collect::<Vec<_>>()
    };
    // (Combining at layer 3, so that layer 1's selection feeds layer 2.)
    let config = |variant| MethodConfig {
        combine_layer: 3,
        ..MethodConfig::new(variant, 3)
    };
    for (pruned, twin) in [(Variant::Pf, Variant::Bert), (Variant::Pfc, Variant::C)] {
        let mut method = config(pruned);
        method.prune_min_len = longest;
        let all = LengthRange {
            min: 3,
            max: longest,
        };
        assert_eq!(method.effective(all), config(twin));
        assert!(
            run(method.clone()) == run(config(twin)),
            "{pruned:?} differs"
        );
        // One token fewer allowed: the longest examples are pruned, the runs differ.
        method.prune_min_len = longest - 1;
        assert_eq!(method.effective(all), method);
        assert_eq!(
            method.effective(LengthRange {
                min: longest,
                max: longest
            }),
            MethodConfig {
                prune_min_len: 0,
                ..method.clone()
            },
            "every example longer: pruned as with 0"
        );
        assert!(
            run(method) != run(config(twin)),
            "{pruned:?} pruned nothing"
        );
    }
}
