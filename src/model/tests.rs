//! Model-level checks: construction, batch limits, gradients of the whole pass against
//! finite differences, pooling weights and the combination tokens' initialisation.

use super::*;

fn tiny() -> (BertConfig, MethodConfig) {
    (
        BertConfig::sized(40, 8, 2, 2, 16),
        MethodConfig::new(Variant::Bert, 2),
    )
}

#[test]
fn from_params_rejects_missing_extra_and_misshapen_tensors() {
    let (cfg, method) = tiny();
    let model = Model::random(cfg.clone(), method.clone(), 3, 1).unwrap();

    let mut extra = model.params.clone();
    extra.add("comb_tokens", &[8, 8], vec![0.0; 64]);
    let err = Model::from_params(cfg.clone(), method.clone(), 3, extra).unwrap_err();
    assert!(
        format!("{err:#}").contains("unexpected tensor `comb_tokens`"),
        "{err:#}"
    );

    let mut missing = ParamStore::new();
    for t in model
        .params
        .tensors
        .iter()
        .filter(|t| t.name != "classifier.bias")
    {
        missing.add(&t.name, &t.shape, t.data.clone());
    }
    let err = Model::from_params(cfg.clone(), method.clone(), 3, missing).unwrap_err();
    assert!(
        format!("{err:#}").contains("missing tensor `classifier.bias`"),
        "{err:#}"
    );

    let err = Model::from_params(cfg, method, 4, model.params.clone()).unwrap_err();
    assert!(format!("{err:#}").contains("classifier.weight"), "{err:#}");
}

#[test]
fn batch_checks_catch_out_of_range_ids_and_lengths() {
    let (cfg, method) = tiny();
    let model = Model::random(cfg, method, 3, 1).unwrap();
    let ok = Batch::from_sequences(&[&[2, 5, 3]], 0);
    assert!(model.check_batch(&ok).is_ok());
    let bad = Batch::from_sequences(&[&[2, 99, 3]], 0);
    assert!(model.check_batch(&bad).is_err());
}

/// Central differences of `sum_k c_k logits_k` (eval mode: no dropout, no Gumbel
/// noise) against `backward`, for the tensors in `names`. Tensors after the combiner
/// do not move the hard assignments, so their loss is smooth and the check exact: it
/// covers the pooling stage (mean, or count-weighted with the counts as constants).
fn check_model_grads(method: MethodConfig, names: &[&str]) {
    let cfg = BertConfig::sized(40, 8, 3, 2, 16);
    let mut model = Model::random(cfg, method, 3, 7).unwrap();
    if let Some(id) = model.params.id("combiner.w_o.bias") {
        // A random combiner starts with zero biases, so with the group residual a group
        // that received no token is the constant row W_o·0 + b_o = 0, where the block's
        // LayerNorm is singular (1/std ~ 1e6): no finite difference is meaningful there.
        // A pretrained (copied) b_o is not constant; so is this one.
        let b = crate::kernels::gradcheck::random_vec(5, model.params.data(id).len(), 0.5);
        model.params.data_mut(id).copy_from_slice(&b);
    }
    let batch = Batch::from_sequences(&[&[2, 5, 7, 9, 11, 3], &[2, 6, 3]], 0);
    let c = crate::kernels::gradcheck::random_vec(11, 2 * 3, 1.0);
    let loss = |m: &Model| -> f64 {
        let (out, _) = m.forward(&batch, Mode::Eval, false);
        crate::kernels::gradcheck::dot(&c, &crate::kernels::gradcheck::to_f64(&out.logits))
    };
    let (_, tape) = model.forward(&batch, Mode::Eval, true);
    let mut grads = model.params.zeros_like();
    model.backward(&tape.unwrap(), &c, &mut grads);
    for name in names {
        let id = model
            .params
            .id(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        let n = model.params.data(id).len();
        let mut want = vec![0.0f64; n];
        for (i, w) in want.iter_mut().enumerate() {
            let x = model.params.data(id)[i];
            let h = 1e-2f32;
            model.params.data_mut(id)[i] = x + h;
            let up = loss(&model);
            model.params.data_mut(id)[i] = x - h;
            let down = loss(&model);
            model.params.data_mut(id)[i] = x;
            *w = (up - down) / (2.0 * h as f64);
        }
        crate::kernels::gradcheck::assert_grad_close(name, grads.data(id), &want, 2e-2);
    }
}

#[test]
fn mean_pooling_gradient_matches_finite_differences() {
    let method = MethodConfig::new(Variant::Bert, 3);
    check_model_grads(
        method,
        &["classifier.weight", "encoder.layer.2.output.dense.weight"],
    );
}

#[test]
fn combining_poolings_gradients_match_finite_differences() {
    let settings = [
        (CombinePooling::Mean, CombineResidual::Token),
        (CombinePooling::Counts, CombineResidual::Token),
        (CombinePooling::Counts, CombineResidual::Group),
        (CombinePooling::CountsAndTokens, CombineResidual::Token),
    ];
    for (pooling, residual) in settings {
        let mut method = MethodConfig::new(Variant::C, 3);
        method.combine_layer = 2;
        method.combine_tokens = 3;
        method.combine_pooling = pooling;
        method.combine_residual = residual;
        method.combine_token_init = CombineTokenInit::Vocab;
        method.combine_scale = 0.35;
        let later = [
            "classifier.weight",
            "encoder.layer.2.output.dense.weight",
            "encoder.layer.2.attention.self.value.weight",
        ];
        check_model_grads(method.clone(), &later);
        // The layer block after the grouping: its own tensors and W_o before it (the
        // assignments do not depend on either).
        method.combine_block = CombineBlock::Layer;
        let block = [
            "combiner.attn_norm.weight",
            "combiner.ffn_in.weight",
            "combiner.ffn_out.bias",
            "combiner.ffn_norm.weight",
            "combiner.w_o.weight",
            "combiner.w_v.bias",
        ];
        check_model_grads(method, &[&later[..], &block[..]].concat());
    }
}

/// Several assignment heads (`--combine-heads`): the same whole-model check, both residuals.
#[test]
fn combining_with_heads_gradients_match_finite_differences() {
    for residual in [CombineResidual::Token, CombineResidual::Group] {
        let mut method = MethodConfig::new(Variant::C, 3);
        method.combine_layer = 2;
        method.combine_tokens = 3;
        method.combine_heads = 2;
        method.combine_pooling = CombinePooling::Counts;
        method.combine_residual = residual;
        method.combine_token_init = CombineTokenInit::Vocab;
        method.combine_scale = 0.5;
        method.combine_block = CombineBlock::Layer;
        check_model_grads(
            method,
            &[
                "classifier.weight",
                "encoder.layer.2.output.dense.weight",
                "combiner.w_o.weight",
                "combiner.w_v.bias",
            ],
        );
    }
}

/// With one combination token every token joins it whatever the logits (the softmax over
/// one slot is constant), so the whole pass is smooth and the tensors before the combiner
/// can be checked too: this covers the path from the head back into the layers before
/// the combiner that `CountsAndTokens` pooling adds (and the combiner's value path).
#[test]
fn one_token_combining_gradients_match_finite_differences_before_the_combiner() {
    let settings = [
        (CombinePooling::Counts, true),
        (CombinePooling::CountsAndTokens, true),
        (CombinePooling::Counts, false),
    ];
    for (pooling, visible) in settings {
        let mut method = MethodConfig::new(Variant::C, 3);
        method.combine_layer = 2;
        method.combine_tokens = 1;
        method.combine_pooling = pooling;
        method.combine_visible = visible;
        method.combine_token_init = CombineTokenInit::Vocab;
        check_model_grads(
            method,
            &[
                "encoder.layer.0.output.dense.weight",
                "encoder.layer.0.attention.self.value.weight",
                "combiner.w_v.weight",
                "classifier.weight",
            ],
        );
    }
}

/// `--combine-visible false`: in the layers before the combiner the embedded tokens'
/// states do not depend on the combination tokens at all (they are not among their
/// keys), while the combination tokens still read the document; with the method.md
/// default they do. Pruned (pfc) and unpruned (c).
#[test]
fn hidden_combination_tokens_leave_the_embedded_tokens_alone() {
    let cfg = BertConfig::sized(40, 8, 3, 2, 16);
    let batch = Batch::from_sequences(&[&[2, 5, 7, 9, 11, 13, 3], &[2, 6, 3]], 0);
    let (n, m) = (batch.seq, 3);
    for variant in [Variant::C, Variant::Pfc] {
        for visible in [false, true] {
            let mut method = MethodConfig::new(variant, 3);
            method.combine_layer = 3;
            method.combine_tokens = m;
            method.keep_ratio = 0.5;
            method.combine_visible = visible;
            let model = Model::random(cfg.clone(), method, 3, 7).unwrap();
            let noise = Noise::of(Mode::Eval);
            let (x, _) = model.embed(&batch, noise);
            let mut moved = x.clone();
            // Other combination-token rows entering the first layer.
            for b in 0..batch.batch {
                for r in n..n + m {
                    for v in &mut moved[(b * (n + m) + r) * 8..][..8] {
                        *v = -0.5 * *v + 0.25;
                    }
                }
            }
            let run = |x: Vec<f32>| {
                let mut trace = trace::Trace::default();
                let (out, _) = model.pruned_layers(x, &batch, noise, false, &mut trace);
                (out, trace)
            };
            let ((before, trace_a), (after, trace_b)) = (run(x), run(moved));
            let real_rows =
                |out: &[f32], b: usize| out[b * (n + m) * 8..][..batch.lengths[b] * 8].to_vec();
            let comb_rows = |out: &[f32], b: usize| out[(b * (n + m) + n) * 8..][..m * 8].to_vec();
            for b in 0..batch.batch {
                assert_ne!(comb_rows(&before, b), comb_rows(&after, b));
                if visible {
                    assert_ne!(real_rows(&before, b), real_rows(&after, b), "{variant:?}");
                } else {
                    assert_eq!(real_rows(&before, b), real_rows(&after, b), "{variant:?}");
                }
            }
            if !visible {
                // The pruning decisions read only the embedded queries' attention.
                let kept =
                    |t: &trace::Trace| t.layers.iter().map(|l| l.kept.clone()).collect::<Vec<_>>();
                assert_eq!(kept(&trace_a), kept(&trace_b));
            }
        }
    }
}

/// `CountsAndTokens` also pools the combiner's input rows, a path the whole-model check
/// cannot reach (every tensor before the combiner moves the hard assignments): central
/// differences of `sum c * pooled` over both inputs of the pooling stage.
#[test]
fn token_pooling_gradient_matches_finite_differences() {
    use crate::kernels::gradcheck::{assert_grad_close, dot, random_vec, to_f64};
    let cfg = BertConfig::sized(40, 8, 3, 2, 16);
    let mut method = MethodConfig::new(Variant::C, 3);
    method.combine_layer = 2;
    method.combine_tokens = 3;
    method.combine_pooling = CombinePooling::CountsAndTokens;
    let model = Model::random(cfg, method, 3, 7).unwrap();
    let (d, n, m, lengths) = (8, 4, 3, [4usize, 2]);
    let assign = [0i64, 2, 2, 1, 1, 1, -1, -1];
    let hidden = random_vec(3, 2 * m * d, 1.0);
    let tokens = random_vec(4, 2 * (n + m) * d, 1.0);
    let c = random_vec(5, 2 * d, 1.0);
    let loss = |h: &[f32], t: &[f32]| -> f64 {
        let (pooled, _) = model.pool(h.to_vec(), &lengths, Some(&assign), Some(t));
        dot(&c, &to_f64(&pooled))
    };
    let (_, tape) = model.pool(hidden.clone(), &lengths, Some(&assign), Some(&tokens));
    let mut grads = model.params.zeros_like();
    let (dh, dt) = model.pool_backward(&tape, &c, &mut grads);
    let dt = dt.expect("token rows are pooled");
    let numeric = |x: &[f32], f: &dyn Fn(&[f32]) -> f64| -> Vec<f64> {
        (0..x.len())
            .map(|i| {
                let (mut up, mut down) = (x.to_vec(), x.to_vec());
                up[i] += 1e-2;
                down[i] -= 1e-2;
                (f(&up) - f(&down)) / 2e-2
            })
            .collect()
    };
    let want_h = numeric(&hidden, &|h| loss(h, &tokens));
    let want_t = numeric(&tokens, &|t| loss(&hidden, t));
    assert_grad_close("combined rows", &dh, &want_h, 1e-3);
    assert_grad_close("combiner input rows", &dt, &want_t, 1e-3);
    // Padding and the combination tokens' own input rows take no gradient; the real
    // rows of example 0 take 0.5 / 4 of it, of example 1 0.5 / 2.
    assert!(dt[n * d..(n + m) * d].iter().all(|&g| g == 0.0));
    assert!(dt[(n + m + 2) * d..].iter().all(|&g| g == 0.0));
    assert!((dt[0] - 0.125 * c[0]).abs() < 1e-6);
    assert!((dt[(n + m) * d] - 0.25 * c[d]).abs() < 1e-6);
}

#[test]
fn count_pooling_weighs_each_group_by_its_tokens() {
    let cfg = BertConfig::sized(40, 8, 3, 2, 16);
    let mut method = MethodConfig::new(Variant::C, 3);
    method.combine_layer = 2;
    method.combine_tokens = 3;
    method.combine_pooling = CombinePooling::Counts;
    let model = Model::random(cfg, method, 3, 7).unwrap();
    // Example 0: 5 real tokens (groups 0, 2, 2, -, 2 with one padding), example 1: 2.
    let assign = [0i64, 2, 2, 2, 0, -1, 1, 1, -1, -1, -1, -1];
    let w = model.pool_weights(&[5, 2], 3, Some(&assign));
    assert_eq!(w, vec![0.4, 0.0, 0.6, 0.0, 1.0, 0.0]);
}

#[test]
fn vocab_token_init_has_the_scale_of_embedded_tokens() {
    let cfg = BertConfig::sized(40, 16, 3, 2, 16);
    let mut method = MethodConfig::new(Variant::C, 3);
    method.combine_token_init = CombineTokenInit::Vocab;
    let model = Model::random(cfg, method.clone(), 3, 7).unwrap();
    let t = model.params.get("comb_tokens").unwrap();
    for row in t.data.chunks(16) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        // LayerNorm output with gain 1, bias 0: norm sqrt(d) = 4.
        assert!((norm - 4.0).abs() < 1e-2, "norm {norm}");
    }
    assert_ne!(t.data[..16], t.data[16..32], "tokens must be distinct");
    method.combine_token_init = CombineTokenInit::Normal;
    let model = Model::random(BertConfig::sized(40, 16, 3, 2, 16), method, 3, 7).unwrap();
    let t = model.params.get("comb_tokens").unwrap();
    let norm = t.data[..16].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(norm < 0.3, "reference init norm {norm}");
}

/// `prune_min_len`: an example of at most that many tokens keeps every key in every
/// layer (no selection is recorded for it), a longer one in the same batch is pruned as
/// before, and the short one's logits are those of the same model pruning nothing.
#[test]
fn examples_up_to_prune_min_len_are_not_pruned() {
    let cfg = BertConfig::sized(40, 8, 3, 2, 16);
    let mut method = MethodConfig::new(Variant::P, 3);
    method.keep_ratio = 0.5;
    let long: Vec<u32> = (2..14).collect();
    let short = [2u32, 6, 9, 4, 3];
    let batch = Batch::from_sequences(&[&long, &short], 0);
    let run = |method: &MethodConfig| {
        let model = Model::random(cfg.clone(), method.clone(), 3, 7).unwrap();
        model.forward(&batch, Mode::Eval, false).0
    };

    let every = run(&method);
    method.prune_min_len = 5;
    let gated = run(&method);
    let first = &gated.trace.layers[0];
    assert!(first.selection[1].is_none(), "the short example was pruned");
    let kept_long = &first.selection[0].as_ref().expect("the long one is").kept;
    assert_eq!(kept_long.len(), 6, "12 tokens at p = 0.5");
    assert_eq!(gated.trace.layers[1].kept[1], (0..5).collect::<Vec<_>>());
    // The long example is pruned as without the setting.
    assert_eq!(&gated.logits[..3], &every.logits[..3]);
    assert_eq!(every.trace.layers[1].kept[0], gated.trace.layers[1].kept[0]);

    let mut nothing = method.clone();
    nothing.keep_ratio = 1.0;
    nothing.prune_min_len = 0;
    let unpruned = run(&nothing);
    assert_eq!(&gated.logits[3..], &unpruned.logits[3..]);
    assert_ne!(
        &every.logits[3..],
        &unpruned.logits[3..],
        "p = 0.5 pruned it before"
    );

    // A batch within the limit runs exactly as bert (same weights, same computation).
    let short_only = Batch::from_sequences(&[&short, &[2, 7, 3]], 0);
    let logits = |method: MethodConfig| {
        let model = Model::random(cfg.clone(), method, 3, 7).unwrap();
        model.forward(&short_only, Mode::Eval, false).0.logits
    };
    assert_eq!(logits(method), logits(MethodConfig::new(Variant::Bert, 3)));
}

/// A pf model whose every example is within `prune_min_len` (no selection at all): the
/// backward pass of its layers against finite differences.
#[test]
fn pf_within_prune_min_len_gradient_matches_finite_differences() {
    let mut method = MethodConfig::new(Variant::Pf, 3);
    method.prune_min_len = 6;
    check_model_grads(
        method,
        &[
            "classifier.weight",
            "encoder.layer.0.attention.self.value.weight",
            "encoder.layer.1.output.dense.weight",
        ],
    );
}

/// A model of `variant` wide enough for its linear layers to be packed (dimensions
/// above 32), a padded batch of two examples and a gradient for its logits.
fn packable_case(variant: Variant) -> (Model, Batch, Vec<f32>) {
    let cfg = BertConfig::sized(60, 64, 4, 2, 128);
    let method = MethodConfig {
        prune_min_len: 0,
        ..MethodConfig::recommended(variant, &cfg)
    };
    let model = Model::random(cfg, method, 3, 7).unwrap();
    let seq: Vec<u32> = (0..40).map(|i| 2 + (i * 7) % 50).collect();
    let batch = Batch::from_sequences(&[&seq, &seq[..25]], 0);
    let dlogits = crate::kernels::gradcheck::random_vec(11, 2 * 3, 1.0);
    (model, batch, dlogits)
}

/// The logits of a recorded forward pass, and the gradients of its backward from
/// `dlogits`.
fn logits_and_grads(model: &Model, batch: &Batch, dlogits: &[f32]) -> (Vec<f32>, ParamStore) {
    let (out, tape) = model.forward(batch, Mode::Eval, true);
    let mut grads = model.params.zeros_like();
    model.backward(&tape.unwrap(), dlogits, &mut grads);
    (out.logits, grads)
}

#[test]
fn bf16_training_gradients_stay_close_to_f32() {
    // Mixed precision (`train --precision bf16`): with the weights packed in bf16, the
    // forward products and both backward products of every linear layer round their
    // operands to bf16 (f32 sums). Dimensions above 32 so that the layers are packed.
    if crate::kernels::matmul::Precision::Bf16
        .check_available()
        .is_err()
    {
        eprintln!("skipped: no bf16 arithmetic on this CPU");
        return;
    }
    for variant in [Variant::Bert, Variant::Pfc] {
        let (mut model, batch, c) = packable_case(variant);
        let grads_at = |model: &Model| logits_and_grads(model, &batch, &c);
        let (logits32, grads32) = grads_at(&model);
        model
            .params
            .pack_linear_weights_as(crate::kernels::matmul::Precision::Bf16);
        let (logits16, grads16) = grads_at(&model);
        let rel = |a: &[f32], b: &[f32]| {
            let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
            (diff / norm.max(1e-30)).sqrt()
        };
        // Bounds three to five times the largest error the AMX engine measured (logits
        // 1.8e-4 bert, 4.0e-4 pfc; all gradients 2.2e-4, 3.5e-4; per tensor up to 6.3e-3,
        // the deeper layers' query and key weights, whose gradients are the smallest).
        let logit_err = rel(&logits16, &logits32);
        assert!(
            logit_err > 0.0 && logit_err < 2e-3,
            "{variant:?} logits: {logit_err}"
        );
        // Per tensor for bert; for pfc over all tensors together, since a hard
        // assignment whose two best slots are within bf16's rounding may go either way
        // (the combiner's own small tensors then get a different gradient).
        let (mut all16, mut all32) = (Vec::new(), Vec::new());
        for t in &model.params.tensors {
            let id = model.params.id(&t.name).unwrap();
            let (g16, g32) = (grads16.data(id), grads32.data(id));
            assert!(g16.iter().all(|g| g.is_finite()), "{variant:?} {}", t.name);
            // A key bias adds the same q_i·b to a whole row of scores, which softmax
            // ignores: its gradient is 0 up to rounding, and rounding is all it shows.
            if g32.iter().all(|&g| g == 0.0) || t.name.ends_with("key.bias") {
                continue;
            }
            all16.extend_from_slice(g16);
            all32.extend_from_slice(g32);
            let err = rel(g16, g32);
            // bf16 keeps 8 bits (2^-9 relative per rounded operand).
            if variant == Variant::Bert {
                assert!(err < 2e-2, "{variant:?} {}: relative error {err}", t.name);
            }
        }
        let err = rel(&all16, &all32);
        assert!(
            err < 1.5e-3,
            "{variant:?}: relative error {err} over all gradients"
        );
        let id = model
            .params
            .id("encoder.layer.0.attention.self.query.weight");
        let id = id.expect("the first layer's query weight");
        assert_ne!(
            grads16.data(id),
            grads32.data(id),
            "bf16 products did not run"
        );
    }
}

#[test]
fn combine_dropout_applies_from_the_combiners_block_on() {
    let cfg = BertConfig::sized(40, 8, 4, 2, 16);
    let mut method = MethodConfig::new(Variant::C, 4);
    assert_eq!(method.combine_layer, 3);
    method.combine_dropout = Some(0.0);
    let model = Model::random(cfg.clone(), method.clone(), 3, 1).unwrap();
    let noise = Noise::of(Mode::Train { seed: 7 });
    // Layers 1 and 2 keep the checkpoint's dropout; the replaced layer 3 (its block) and
    // layer 4 (on the combined tokens) take the setting.
    let probs: Vec<(f32, f32)> = (0..4)
        .map(|l| {
            let d = model.layer_dropout(noise, l).expect("training has dropout");
            (d.hidden_p, d.attn_p)
        })
        .collect();
    let kept = (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob);
    assert_eq!(probs, [kept, kept, (0.0, 0.0), (0.0, 0.0)]);
    assert!(model.layer_dropout(Noise::of(Mode::Eval), 3).is_none());

    // Unset, every layer keeps the checkpoint's.
    method.combine_dropout = None;
    let model = Model::random(cfg.clone(), method.clone(), 3, 1).unwrap();
    let d = model.layer_dropout(noise, 3).unwrap();
    assert_eq!((d.hidden_p, d.attn_p), kept);

    // Out of range, or on a variant without a combiner: refused.
    method.combine_dropout = Some(1.0);
    assert!(method.validate(4).is_err());
    let mut bert = MethodConfig::new(Variant::Bert, 4);
    bert.combine_dropout = Some(0.0);
    let err = bert.validate(4).unwrap_err();
    assert!(format!("{err:#}").contains("--combine-dropout"), "{err:#}");
}

/// `pack_for_inference` fuses each layer's projections into one product (queries, keys
/// and values; keys and values for the pruning variants): the same panels side by side,
/// so the logits are the same bits as with every weight packed alone, with or without
/// the tape (which gets the rows copied out of the fused product).
#[test]
fn fused_projections_give_the_logits_of_separate_ones() {
    use crate::kernels::matmul::Precision;
    for variant in [Variant::Bert, Variant::Pf, Variant::C, Variant::Pfc] {
        let (mut model, batch, c) = packable_case(variant);
        let grads_at = |model: &Model| logits_and_grads(model, &batch, &c);
        model.params.pack_linear_weights_as(Precision::F32);
        let separate = model.forward(&batch, Mode::Eval, false).0.logits;
        let (_, separate_grads) = grads_at(&model);
        model.pack_for_inference(Precision::F32);
        // Queries, keys and values fused in every layer, but keys and values only in
        // the pruning variants' layers after the first.
        for (i, l) in model.layout.layers.iter().enumerate() {
            let Some(l) = l else { continue };
            let part = |l: crate::model::layout::LinearIds| (l.w, l.b);
            let qkv = model
                .params
                .fused(&[part(l.query), part(l.key), part(l.value)]);
            let kv = model.params.fused(&[part(l.key), part(l.value)]);
            let gathers = variant.prunes() && i > 0;
            assert_eq!(
                (qkv.is_some(), kv.is_some()),
                (!gathers, gathers),
                "{variant:?} {i}"
            );
        }
        let fused = model.forward(&batch, Mode::Eval, false).0.logits;
        let (recorded, grads) = grads_at(&model);
        assert_eq!(fused, separate, "{variant:?}");
        assert_eq!(recorded, separate, "{variant:?} (recording)");
        for (g, s) in grads.tensors.iter().zip(&separate_grads.tensors) {
            assert_eq!(g.data, s.data, "{variant:?} gradient of {}", g.name);
        }
    }
}
