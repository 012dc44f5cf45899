//! Parity with the PyTorch reference (`../shared/golden`, see its README): forward values
//! and decisions of every variant, and gradients under THE per-tensor rule.

mod common;

use common::{golden_json, golden_params, max_abs_diff, test_model_dir, Golden};
use corefocus::model::{
    checkpoint::load_hf_checkpoint, Batch, MethodConfig, Mode, Model, ParamStore, Variant,
};

const LABELS: [usize; 3] = [0, 3, 1];

fn golden_batch() -> Batch {
    let g = Golden::open("inputs.safetensors");
    let ids = g.i64("input_ids");
    let mask = g.i64("attention_mask");
    let (bsz, n) = (3, 22);
    assert_eq!(ids.len(), bsz * n);
    Batch {
        ids: ids.iter().map(|&v| v as u32).collect(),
        type_ids: g.i64("token_type_ids").iter().map(|&v| v as u32).collect(),
        lengths: mask
            .chunks(n)
            .map(|r| r.iter().sum::<i64>() as usize)
            .collect(),
        batch: bsz,
        seq: n,
    }
}

/// The golden model of a variant: the checkpoint plus `extra_weights.safetensors`.
fn golden_model(name: &str, assign_eps: f32) -> Model {
    let (bert, params) = load_hf_checkpoint(&test_model_dir()).expect("test checkpoint loads");
    let variant: Variant = name.parse().unwrap();
    let mut method = MethodConfig::new(variant, bert.num_hidden_layers);
    method.keep_ratio = if variant.prunes() { 0.7 } else { 1.0 };
    method.combine_layer = 5;
    method.combine_tokens = 8;
    method.assign_eps = assign_eps;
    method.classifier_dropout = 0.0;
    let mut model = Model::from_bert_params(bert, params, method, 5, 0).expect("model builds");
    let extra = golden_params("extra_weights.safetensors");
    for t in &extra.tensors {
        if let Some(id) = model.params.id(&t.name) {
            assert_eq!(model.params.tensors[id].shape, t.shape, "{}", t.name);
            model.params.tensors[id].data.clone_from(&t.data);
        } else {
            assert!(
                !variant.combines() && (t.name.starts_with("comb")),
                "extra weight {} not in the model",
                t.name
            );
        }
    }
    model
}

fn check_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let diff = max_abs_diff(got, want);
    assert!(diff <= tol, "{what}: max |diff| {diff:e} > {tol:e}");
}

/// Decisions and scores of the pruning steps against `<V>.safetensors`.
fn check_pruning(g: &Golden, out: &corefocus::model::ForwardOutput, fuzzy: bool) {
    let n = 22;
    let kept_idx = g.i64("kept_idx");
    let kept_count = g.i64("kept_count");
    let layers = g.shape("kept_idx")[0];
    assert_eq!(
        out.trace.layers.len(),
        layers,
        "number of pruned-attention layers"
    );
    for (l, lt) in out.trace.layers.iter().enumerate() {
        for b in 0..3 {
            let want: Vec<usize> = kept_idx[(l * 3 + b) * n..(l * 3 + b + 1) * n]
                .iter()
                .filter(|&&v| v >= 0)
                .map(|&v| v as usize)
                .collect();
            assert_eq!(
                lt.kept[b],
                want,
                "kept tokens of layer {} example {b}",
                l + 1
            );
            assert_eq!(lt.kept[b].len() as i64, kept_count[l * 3 + b]);
        }
    }
    let scores = g.f32("scores_head_sum");
    let pruned = g.i64("pruned");
    let n_pruned = g.i64("n_pruned");
    let n_requested = g.i64("n_requested");
    let decisions = g.shape("scores_head_sum")[0];
    for s in 0..decisions {
        for b in 0..3 {
            let sel = out.trace.layers[s].selection[b]
                .as_ref()
                .unwrap_or_else(|| panic!("decision {s} example {b} missing"));
            let cands = &out.trace.layers[s].kept[b];
            let base = (s * 3 + b) * n;
            for (ci, &pos) in cands.iter().enumerate() {
                let w = scores[base + pos];
                assert!(
                    (sel.head_sum[ci] - w).abs() <= 2e-5,
                    "scores_head_sum decision {s} example {b} position {pos}: {} vs {w}",
                    sel.head_sum[ci]
                );
                assert_eq!(
                    sel.pruned[ci] as i64,
                    pruned[base + pos],
                    "pruned {s}/{b}/{pos}"
                );
            }
            let candidate_count = (0..n).filter(|&j| pruned[base + j] >= 0).count();
            assert_eq!(cands.len(), candidate_count, "candidates {s}/{b}");
            assert_eq!(
                sel.pruned.iter().filter(|&&x| x).count() as i64,
                n_pruned[s * 3 + b]
            );
            // The golden `n_requested` counts tokens to remove (t - keep).
            assert_eq!(
                (cands.len() - sel.n_requested) as i64,
                n_requested[s * 3 + b]
            );
            if fuzzy {
                let a = g.f32("fuzzy_a")[s * 3 + b];
                let bb = g.f32("fuzzy_b")[s * 3 + b];
                assert!(
                    (sel.a - a).abs() <= 2e-5,
                    "fuzzy a {s}/{b}: {} vs {a}",
                    sel.a
                );
                assert!(
                    (sel.b - bb).abs() <= 2e-5,
                    "fuzzy b {s}/{b}: {} vs {bb}",
                    sel.b
                );
                let imp = g.f32("importance");
                let prot = g.i64("protected");
                for (ci, &pos) in cands.iter().enumerate() {
                    assert!(
                        (sel.importance[ci] - imp[base + pos]).abs() <= 2e-5,
                        "importance {s}/{b}/{pos}"
                    );
                    assert_eq!(
                        sel.protected[ci] as i64,
                        prot[base + pos],
                        "protected {s}/{b}/{pos}"
                    );
                }
            }
        }
    }
}

/// The forward pass against the reference, once as training and evaluation run it and
/// once as `predict` and `serve` do: weights packed once at load, bias (+ GELU in the
/// feed-forward block) applied inside the products. Both meet the same rule.
fn check_forward(variant: &str, file: &str, assign_eps: f32) {
    let g = Golden::open(file);
    let model = golden_model(variant, assign_eps);
    check_forward_output(&g, &model, file);
    let mut packed = golden_model(variant, assign_eps);
    packed.params.pack_linear_weights();
    check_forward_output(&g, &packed, &format!("{file} (packed weights)"));
}

fn check_forward_output(g: &Golden, model: &Model, file: &str) {
    let (out, _) = model.forward(&golden_batch(), Mode::Eval, false);
    check_close(
        &format!("{file} logits"),
        &out.logits,
        &g.f32("logits"),
        1e-4,
    );
    let pooled_tol = if model.method.variant.combines() {
        1e-3
    } else {
        1e-4
    };
    check_close(
        &format!("{file} pooled"),
        &out.pooled,
        &g.f32("pooled"),
        pooled_tol,
    );
    if model.method.variant.prunes() {
        check_pruning(g, &out, model.method.variant.fuzzy());
    }
    if model.method.variant.combines() {
        let assign = out.trace.assign.as_ref().expect("assignments traced");
        let want = g.i64("assign");
        let got: Vec<i64> = assign.iter().flatten().copied().collect();
        assert_eq!(got, want, "{file}: combination-token assignment");
    }
}

#[test]
fn forward_bert() {
    check_forward("bert", "BERT.safetensors", 1.0);
}

#[test]
fn forward_p() {
    check_forward("p", "P.safetensors", 1.0);
}

#[test]
fn forward_pf() {
    check_forward("pf", "PF.safetensors", 1.0);
}

#[test]
fn forward_c() {
    check_forward("c", "C.safetensors", 1.0);
    check_forward("c", "C_eps1e-6.safetensors", 1e-6);
}

#[test]
fn forward_pfc() {
    check_forward("pfc", "PFC.safetensors", 1.0);
    check_forward("pfc", "PFC_eps1e-6.safetensors", 1e-6);
}

/// Loss (mean cross-entropy over the batch) and its gradient, in f64.
fn loss_and_grad(logits: &[f32], classes: usize) -> (f64, Vec<f32>) {
    let rows = LABELS.len();
    let mut loss = 0.0;
    let mut d = vec![0.0f32; logits.len()];
    for r in 0..rows {
        let z = &logits[r * classes..(r + 1) * classes];
        let mx = z.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let se: f64 = z.iter().map(|&v| (v as f64 - mx).exp()).sum();
        loss += -(z[LABELS[r]] as f64 - mx - se.ln());
        for c in 0..classes {
            let p = (z[c] as f64 - mx).exp() / se;
            d[r * classes + c] = ((p - (c == LABELS[r]) as u8 as f64) / rows as f64) as f32;
        }
    }
    (loss / rows as f64, d)
}

/// THE rule of the golden README: per tensor, max|a - ref| <= tol * scale_T and (not for
/// structural zeros) ||a - ref|| / ||ref|| <= tol.
fn check_grads(variant: &str, key: &str, tol: f64) {
    let g = Golden::open(&format!("grads_{key}.safetensors"));
    let summary = golden_json("grads_summary.json");
    let vs = &summary["variants"][key];
    let model = golden_model(variant, 1.0);
    let (out, tape) = model.forward(&golden_batch(), Mode::Eval, true);
    let (loss, dlogits) = loss_and_grad(&out.logits, 5);
    let want_loss = g.f32("loss")[0] as f64;
    assert!(
        (loss - want_loss).abs() <= 1e-5,
        "{key} loss {loss} vs {want_loss}"
    );
    let mut grads: ParamStore = model.params.zeros_like();
    model.backward(tape.as_ref().unwrap(), &dlogits, &mut grads);

    let mut checked = 0;
    for name in g.names() {
        let Some(pname) = name.strip_prefix("grad.") else {
            continue;
        };
        if pname.ends_with(".row_ids") {
            continue;
        }
        let (param, reference, ours): (String, Vec<f32>, Vec<f32>) =
            if let Some(base) = pname.strip_suffix(".rows") {
                let row_ids = g.i64(&format!("grad.{base}.row_ids"));
                let full = grads.get(base).unwrap_or_else(|| panic!("no grad {base}"));
                let d = full.shape[1];
                let mut ours = Vec::new();
                for &r in &row_ids {
                    ours.extend_from_slice(&full.data[r as usize * d..(r as usize + 1) * d]);
                }
                // Every row not listed must be exactly zero.
                for r in 0..full.shape[0] {
                    if !row_ids.contains(&(r as i64)) {
                        assert!(
                            full.data[r * d..(r + 1) * d].iter().all(|&v| v == 0.0),
                            "{base}: row {r} should have zero gradient"
                        );
                    }
                }
                (base.to_string(), g.f32(&name), ours)
            } else {
                let t = grads
                    .get(pname)
                    .unwrap_or_else(|| panic!("{key}: no grad {pname}"));
                (pname.to_string(), g.f32(&name), t.data.clone())
            };
        let scale = vs["tolerance_scales"][&param]
            .as_f64()
            .unwrap_or_else(|| panic!("no tolerance scale for {param}"));
        // Structural zeros carry a string saying why (and a sibling tensor's scale).
        let structural = !vs["f32_vs_f64_grad_errors"][&param]["structural_zero"].is_null();
        let max_err = max_abs_diff(&ours, &reference) as f64;
        assert!(
            max_err <= tol * scale,
            "{key} grad {param}: max|diff| {max_err:e} > {tol} * {scale:e}"
        );
        if !structural {
            let num: f64 = ours
                .iter()
                .zip(&reference)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let den: f64 = reference
                .iter()
                .map(|&b| (b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                num <= tol * den,
                "{key} grad {param}: relative L2 error {:e} > {tol}",
                num / den
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 30,
        "{key}: only {checked} gradient tensors compared"
    );
}

#[test]
fn grads_bert() {
    check_grads("bert", "BERT", 1e-4);
}

#[test]
fn grads_p() {
    check_grads("p", "P", 1e-4);
}

#[test]
fn grads_pf() {
    check_grads("pf", "PF", 1e-4);
}

#[test]
fn grads_c() {
    check_grads("c", "C", 2e-3);
}

#[test]
fn grads_pfc() {
    check_grads("pfc", "PFC", 2e-3);
}

/// `--precision bf16` (where the CPU has AMX or AVX512-BF16): every linear layer's operands
/// rounded to bf16, sums in f32; `--precision int8` (where it has AVX512-VNNI): weights
/// quantised per column and activations per row to int8, exact integer sums. Not the
/// reference's arithmetic, so not the rule above: the logits and pooled vectors must stay
/// within a bound of the reference's largest entry (bf16 2%, measured on the AVX512-BF16
/// engine: logits 0.53%, pooled 0.27%; int8 10%, measured: logits 5.3%, pooled 3.5%: 8-bit
/// activations per row, whose range an outlier channel sets), and must differ from the f32
/// pass (the reduced-precision kernel ran).
#[test]
fn forward_bert_at_reduced_precision_stays_close() {
    use corefocus::kernels::matmul::Precision;
    for (precision, bound) in [(Precision::Bf16, 0.02), (Precision::Int8, 0.1)] {
        if precision.check_available().is_err() {
            eprintln!("skipped {precision}: not available on this CPU");
            continue;
        }
        let g = Golden::open("BERT.safetensors");
        let mut model = golden_model("bert", 1.0);
        let (f32_out, _) = model.forward(&golden_batch(), Mode::Eval, false);
        model.params.pack_linear_weights_as(precision);
        let (out, _) = model.forward(&golden_batch(), Mode::Eval, false);
        for (what, got, f32_got, want) in [
            ("logits", &out.logits, &f32_out.logits, g.f32("logits")),
            ("pooled", &out.pooled, &f32_out.pooled, g.f32("pooled")),
        ] {
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            eprintln!("{precision} {what}: max error {err} of the largest entry");
            assert!(
                err <= bound,
                "{precision} {what}: max error {err} of the largest entry"
            );
            assert!(
                got != f32_got,
                "{precision} {what}: identical to f32 (kernel not used?)"
            );
        }
    }
}
