//! The combiner against the golden files, a float64 reference and finite differences.

use super::*;
use crate::model::golden::Golden;
use crate::rng::Rng;

/// The combiner's tensors in `CombinerIds` order, without the `combiner.` prefix.
const NAMES: [&str; 12] = [
    "norm_c.weight",
    "norm_c.bias",
    "norm_e.weight",
    "norm_e.bias",
    "w_q.weight",
    "w_q.bias",
    "w_k.weight",
    "w_k.bias",
    "w_v.weight",
    "w_v.bias",
    "w_o.weight",
    "w_o.bias",
];
const HIDDEN: usize = NAMES.len(); // index of the input in a variable list

fn is_matrix(t: usize) -> bool {
    NAMES[t].starts_with('w') && NAMES[t].ends_with("weight")
}

fn store_from(values: &[Vec<f32>], d: usize) -> ParamStore {
    let mut p = ParamStore::new();
    for (t, name) in NAMES.iter().enumerate() {
        let shape = if is_matrix(t) { vec![d, d] } else { vec![d] };
        p.add(&format!("combiner.{name}"), &shape, values[t].clone());
    }
    p
}

// ----- golden forward -----

/// Runs the combiner on `pre_combine_hidden` of a golden file with the golden
/// weights: the assignments must be identical and `combined` within 1e-3 (the
/// README's tolerance for combination-token rows).
fn check_golden_forward(file: &str, assign_eps: f32) {
    let extra = Golden::open("extra_weights.safetensors");
    let mut p = ParamStore::new();
    for name in NAMES {
        let full = format!("combiner.{name}");
        let (shape, data) = extra.f32s(&full);
        p.add(&full, &shape, data);
    }
    let inputs = Golden::open("inputs.safetensors");
    let (mask_shape, mask) = inputs.i64s("attention_mask");
    let real: Vec<bool> = mask.iter().map(|&x| x != 0).collect();
    let g = Golden::open(file);
    let (shape, hidden) = g.f32s("pre_combine_hidden");
    let (batch, n, d) = (mask_shape[0], mask_shape[1], shape[2]);
    let m = shape[1] - n;
    assert_eq!((batch, n, m, d), (3, 22, 8, 384));
    let ids = CombinerIds::resolve(&p, d).expect("all combiner tensors loaded");
    let dims = CombinerDims { batch, n, m, d };
    let set = CombinerSettings {
        scale: 1.0,
        assign_eps,
        ln_eps: 1e-5,
        residual: CombineResidual::Token,
        assignment: CombineAssignment::Hard,
        gumbel_seed: None,
        key_grad: true,
        heads: 1,
    };
    let mut out = vec![f32::NAN; batch * m * d];
    let (assign, tape) = combiner_forward(&p, &ids, dims, &set, &hidden, &real, &mut out, false);
    assert!(tape.is_none());
    let (_, want_assign) = g.i64s("assign");
    assert_eq!(assign, want_assign, "{file}: assignments differ");
    let (_, want) = g.f32s("combined");
    let worst = out
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-3, "{file}: combined differs by {worst}");
    // Recording must not change the result.
    let mut out2 = vec![0.0; batch * m * d];
    let (assign2, tape) = combiner_forward(&p, &ids, dims, &set, &hidden, &real, &mut out2, true);
    assert!(tape.is_some());
    assert_eq!((assign2, out2), (assign, out));
}

#[test]
fn golden_forward_c() {
    check_golden_forward("C.safetensors", 1.0);
}

#[test]
fn golden_forward_pfc() {
    check_golden_forward("PFC.safetensors", 1.0);
}

#[test]
fn golden_forward_literal_eps() {
    check_golden_forward("C_eps1e-6.safetensors", 1e-6);
    check_golden_forward("PFC_eps1e-6.safetensors", 1e-6);
}

// ----- float64 reference and finite differences -----

/// A small problem: batch 2, n = 5 (the second example has padding at positions 2
/// and 4 and 3 real tokens), m = 3, d = 8. Padding rows of `hidden` hold NaN, so any
/// read of them shows.
struct Problem {
    dims: CombinerDims,
    set: CombinerSettings,
    real: Vec<bool>,
    /// The 12 parameters then the hidden input, as f32-representable f64 values.
    theta: Vec<Vec<f64>>,
    /// Weights of the test loss L = Σ out · loss_w.
    loss_w: Vec<f64>,
}

impl Problem {
    fn new(seed: u64, set: CombinerSettings) -> Problem {
        let dims = CombinerDims {
            batch: 2,
            n: 5,
            m: 3,
            d: 8,
        };
        let CombinerDims { batch, n, m, d } = dims;
        let mut rng = Rng::new(seed);
        let mut normal = |scale: f64, offset: f64| (offset + scale * rng.normal()) as f32 as f64;
        let mut theta = Vec::new();
        for (t, name) in NAMES.iter().enumerate() {
            let v: Vec<f64> = if is_matrix(t) {
                (0..d * d)
                    .map(|_| normal(1.0 / (d as f64).sqrt(), 0.0))
                    .collect()
            } else if name.starts_with("norm") && name.ends_with("weight") {
                (0..d).map(|_| normal(0.2, 1.0)).collect()
            } else {
                (0..d).map(|_| normal(0.2, 0.0)).collect()
            };
            theta.push(v);
        }
        let real = vec![true, true, true, true, true, true, true, false, true, false];
        let mut hidden = vec![f64::NAN; batch * (n + m) * d];
        for b in 0..batch {
            for row in 0..n + m {
                if row < n && !real[b * n + row] {
                    continue;
                }
                for x in 0..d {
                    hidden[(b * (n + m) + row) * d + x] = normal(1.0, 0.3);
                }
            }
        }
        theta.push(hidden);
        let loss_w = (0..batch * m * d).map(|_| normal(1.0, 0.0)).collect();
        Problem {
            dims,
            set,
            real,
            theta,
            loss_w,
        }
    }

    fn f32_params(&self) -> ParamStore {
        let d = self.dims.d;
        store_from(
            &self.theta[..HIDDEN]
                .iter()
                .map(|v| v.iter().map(|&x| x as f32).collect())
                .collect::<Vec<_>>(),
            d,
        )
    }
}

/// Forward values of the float64 reference.
struct RefOut {
    out: Vec<f64>,
    /// `[heads, batch, m, n]`, 0 in padding columns.
    sim: Vec<f64>,
    /// `[heads, batch, n]` assigned combination token, `None` for padding.
    hard: Vec<Option<usize>>,
}

fn ref_layernorm(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let dim = x.len() as f64;
    let mean = x.iter().sum::<f64>() / dim;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / dim;
    let rstd = 1.0 / (var + eps).sqrt();
    x.iter()
        .zip(w)
        .zip(b)
        .map(|((v, w), b)| (v - mean) * rstd * w + b)
        .collect()
}

fn ref_linear(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let d = b.len();
    (0..d)
        .map(|o| b[o] + (0..x.len()).map(|i| w[o * x.len() + i] * x[i]).sum::<f64>())
        .collect()
}

/// The combiner in float64, written from the formulas. With `frozen` (the reference's
/// output at θ0) it computes the straight-through surrogate instead: HA =
/// hard(θ0) + Sim(θ) − Sim(θ0), whose value at θ0 is the forward and whose gradient
/// there is the straight-through gradient.
fn ref_forward(pb: &Problem, th: &[Vec<f64>], frozen: Option<&RefOut>) -> RefOut {
    let CombinerDims { batch, n, m, d } = pb.dims;
    let seq = n + m;
    let (eps, ln_eps, scale) = (
        pb.set.assign_eps as f64,
        pb.set.ln_eps as f64,
        pb.set.scale as f64,
    );
    let heads = pb.set.heads;
    let hd = d / heads;
    let hidden = &th[HIDDEN];
    let row = |b: usize, r: usize| &hidden[(b * seq + r) * d..(b * seq + r + 1) * d];
    let mut out = vec![0.0; batch * m * d];
    let mut sim = vec![0.0; heads * batch * m * n];
    let mut hard = vec![None; heads * batch * n];
    for b in 0..batch {
        let q: Vec<Vec<f64>> = (0..m)
            .map(|i| {
                ref_linear(
                    &ref_layernorm(row(b, n + i), &th[0], &th[1], ln_eps),
                    &th[4],
                    &th[5],
                )
            })
            .collect();
        let mut k = vec![vec![0.0; d]; n];
        let mut v = vec![vec![0.0; d]; n];
        let real: Vec<usize> = (0..n).filter(|&j| pb.real[b * n + j]).collect();
        for &j in &real {
            k[j] = ref_linear(
                &ref_layernorm(row(b, j), &th[2], &th[3], ln_eps),
                &th[6],
                &th[7],
            );
            v[j] = ref_linear(row(b, j), &th[8], &th[9]);
        }
        // u_i and the residual, head by head on its columns.
        let mut u = vec![vec![0.0; d]; m];
        let mut group_residual = vec![vec![0.0; d]; m];
        for h in 0..heads {
            let cols = h * hd..(h + 1) * hd;
            let mut ha = vec![0.0; m * n];
            let mut logits = vec![0.0; m * n];
            for &j in &real {
                let z: Vec<f64> = (0..m)
                    .map(|i| {
                        let dot: f64 = cols.clone().map(|x| q[i][x] * k[j][x]).sum();
                        let index = (((h * batch + b) * m + i) * n + j) as u64;
                        let noise = pb.set.gumbel_seed.map_or(0.0, |s| gumbel(s, index));
                        scale * dot + noise
                    })
                    .collect();
                let zmax = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = z.iter().map(|x| (x - zmax).exp()).sum();
                let at = |i: usize| ((h * batch + b) * m + i) * n + j;
                let mut best = 0;
                for i in 0..m {
                    sim[at(i)] = (z[i] - zmax).exp() / total;
                    if sim[at(i)] > sim[at(best)] {
                        best = i;
                    }
                }
                let hj = (h * batch + b) * n + j;
                hard[hj] = Some(best);
                for i in 0..m {
                    logits[i * n + j] = z[i];
                    let x = at(i);
                    ha[i * n + j] = match frozen {
                        _ if pb.set.assignment == CombineAssignment::Soft => sim[x],
                        None => (i == best) as u8 as f64,
                        Some(f) => (f.hard[hj] == Some(i)) as u8 as f64 + sim[x] - f.sim[x],
                    };
                }
            }
            let attend = pb.set.assignment == CombineAssignment::Attend;
            if attend {
                // A: each combination token's softmax over the real tokens.
                for i in 0..m {
                    let zmax = real
                        .iter()
                        .map(|&j| logits[i * n + j])
                        .fold(f64::MIN, f64::max);
                    let total: f64 = real.iter().map(|&j| (logits[i * n + j] - zmax).exp()).sum();
                    for &j in &real {
                        ha[i * n + j] = (logits[i * n + j] - zmax).exp() / total;
                    }
                }
            }
            for i in 0..m {
                let denom: f64 =
                    (0..n).map(|j| ha[i * n + j]).sum::<f64>() + if attend { 0.0 } else { eps };
                for x in cols.clone() {
                    u[i][x] = real.iter().map(|&j| ha[i * n + j] * v[j][x]).sum::<f64>() / denom;
                    group_residual[i][x] = real
                        .iter()
                        .map(|&j| ha[i * n + j] * row(b, j)[x])
                        .sum::<f64>()
                        / denom;
                }
            }
        }
        for i in 0..m {
            let proj = ref_linear(&u[i], &th[10], &th[11]);
            for x in 0..d {
                let residual = match pb.set.residual {
                    CombineResidual::Token => row(b, n + i)[x],
                    CombineResidual::Group => group_residual[i][x],
                };
                out[(b * m + i) * d + x] = residual + proj[x];
            }
        }
    }
    RefOut { out, sim, hard }
}

fn ref_loss(pb: &Problem, th: &[Vec<f64>], frozen: Option<&RefOut>) -> f64 {
    let r = ref_forward(pb, th, frozen);
    r.out.iter().zip(&pb.loss_w).map(|(a, b)| a * b).sum()
}

/// The implementation's forward on the problem, recorded: (parameters, their ids,
/// assignments, output, tape).
fn forward_impl(pb: &Problem) -> (ParamStore, CombinerIds, Vec<i64>, Vec<f32>, CombinerTape) {
    let CombinerDims { batch, m, d, .. } = pb.dims;
    let p = pb.f32_params();
    let ids = CombinerIds::resolve(&p, d).expect("test store has every tensor");
    let hidden: Vec<f32> = pb.theta[HIDDEN].iter().map(|&x| x as f32).collect();
    let mut out = vec![0.0; batch * m * d];
    let (assign, tape) = combiner_forward(
        &p, &ids, pb.dims, &pb.set, &hidden, &pb.real, &mut out, true,
    );
    (p, ids, assign, out, tape.expect("recorded"))
}

/// The implementation's forward and backward on the problem: (assignments, output,
/// parameter gradients in NAMES order, input gradient).
fn run_impl(pb: &Problem) -> (Vec<i64>, Vec<f32>, Vec<Vec<f32>>, Vec<f32>) {
    let CombinerDims { batch, n, m, d } = pb.dims;
    let (p, ids, assign, out, tape) = forward_impl(pb);
    let dout: Vec<f32> = pb.loss_w.iter().map(|&x| x as f32).collect();
    let mut grads = p.zeros_like();
    let mut dhidden = vec![f32::NAN; batch * (n + m) * d];
    combiner_backward(&p, &ids, pb.dims, &tape, &dout, &mut dhidden, &mut grads);
    let g = NAMES
        .iter()
        .map(|nm| {
            grads
                .get(&format!("combiner.{nm}"))
                .expect("grad")
                .data
                .clone()
        })
        .collect();
    (assign, out, g, dhidden)
}

/// Central differences of `loss` in every entry of variable `t` (padding rows of
/// the hidden input are skipped and reported as NaN).
fn finite_differences(pb: &Problem, t: usize, loss: &dyn Fn(&[Vec<f64>]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let CombinerDims { n, m, d, .. } = pb.dims;
    (0..pb.theta[t].len())
        .map(|x| {
            if t == HIDDEN {
                let (b, r) = (x / d / (n + m), x / d % (n + m));
                if r < n && !pb.real[b * n + r] {
                    return f64::NAN;
                }
            }
            let mut th = pb.theta.clone();
            th[t][x] += h;
            let plus = loss(&th);
            th[t][x] -= 2.0 * h;
            let minus = loss(&th);
            (plus - minus) / (2.0 * h)
        })
        .collect()
}

/// Per-tensor comparison (the golden README's rule): max|a − fd| ≤ tol · max|fd|.
/// The f32 implementation is measured at ~5e-7 of the scale; tol leaves a margin.
/// Padding entries (NaN in `fd`) must have exactly zero gradient.
fn assert_close(what: &str, analytic: &[f32], fd: &[f64], tol: f64) {
    let scale = fd
        .iter()
        .filter(|x| !x.is_nan())
        .fold(0.0f64, |a, x| a.max(x.abs()));
    assert!(
        scale > 1e-6,
        "{what}: gradient is (nearly) zero, the check would be vacuous"
    );
    let mut worst = 0.0f64;
    for (x, (&a, &f)) in analytic.iter().zip(fd).enumerate() {
        if f.is_nan() {
            assert_eq!(a, 0.0, "{what}[{x}]: padding must get zero gradient");
        } else {
            worst = worst.max((a as f64 - f).abs());
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: max error {worst:e} vs scale {scale:e}"
    );
}

fn settings(scale: f32, assign_eps: f32, gumbel_seed: Option<u64>) -> CombinerSettings {
    CombinerSettings {
        scale,
        assign_eps,
        ln_eps: 1e-5,
        residual: CombineResidual::Token,
        assignment: CombineAssignment::Hard,
        gumbel_seed,
        key_grad: true,
        heads: 1,
    }
}

/// (seed, scale, assign_eps, noise, residual) of the problems every test below runs.
const SETUPS: [(u64, f32, f32, Option<u64>, CombineResidual); 5] = [
    (1, 0.7, 1.0, Some(42), CombineResidual::Token),
    (2, 1.0, 0.5, None, CombineResidual::Token),
    (3, 1.3, 1.0, Some(7), CombineResidual::Token),
    (11, 0.7, 1.0, Some(42), CombineResidual::Group),
    (12, 1.0, 0.5, None, CombineResidual::Group),
];

fn setup_problem(
    (seed, scale, eps, noise, residual): (u64, f32, f32, Option<u64>, CombineResidual),
) -> Problem {
    let set = CombinerSettings {
        residual,
        ..settings(scale, eps, noise)
    };
    Problem::new(seed, set)
}

/// Runs the implementation on `pb` and checks its assignment and output against the
/// float64 reference; returns what [`run_impl`] does.
fn check_forward(pb: &Problem, what: &str) -> (Vec<i64>, Vec<f32>, Vec<Vec<f32>>, Vec<f32>) {
    let r = ref_forward(pb, &pb.theta, None);
    let got = run_impl(pb);
    // (the implementation returns head 0's assignment)
    let head0 = &r.hard[..pb.dims.batch * pb.dims.n];
    let want: Vec<i64> = head0.iter().map(|h| h.map_or(-1, |i| i as i64)).collect();
    assert_eq!(got.0, want, "{what}: assignment");
    let worst = got
        .1
        .iter()
        .zip(&r.out)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "{what}: forward differs by {worst}");
    got
}

#[test]
fn forward_matches_float64_reference() {
    let mut empty_group_seen = false;
    for setup in SETUPS {
        let (seed, pb) = (setup.0, setup_problem(setup));
        let (assign, _, _, _) = check_forward(&pb, &format!("setup {seed}"));
        let used: std::collections::HashSet<i64> =
            assign[5..].iter().copied().filter(|&a| a >= 0).collect();
        empty_group_seen |= used.len() < 3;
    }
    // The gradient tests must cover a combination token that received no token.
    assert!(
        empty_group_seen,
        "no setup leaves a combination token empty"
    );
}

#[test]
fn noise_changes_assignments_deterministically() {
    let pb = Problem::new(4, settings(1.0, 1.0, None));
    let clean = run_impl(&pb).0;
    let noisy_pb = Problem::new(4, settings(1.0, 1.0, Some(9)));
    let noisy = run_impl(&noisy_pb).0;
    assert_eq!(noisy, run_impl(&noisy_pb).0);
    let other = run_impl(&Problem::new(4, settings(1.0, 1.0, Some(10)))).0;
    assert!(
        noisy != clean || other != clean,
        "Gumbel noise never changed an assignment"
    );
}

/// Every parameter's and the input's gradient against central differences of `loss`.
/// w_q.bias and norm_c.bias are structural zeros (constant over i in the logits, which the
/// softmax over i ignores; with the attention weights, softmax over j, w_k.bias and
/// norm_e.bias are instead): they must be ~0 on the scale of their sibling weight.
fn check_every_gradient(
    pb: &Problem,
    what: &str,
    loss: &dyn Fn(&[Vec<f64>]) -> f64,
    grads: &[Vec<f32>],
    dhidden: &[f32],
) {
    for t in 0..=HIDDEN {
        let fd = finite_differences(pb, t, loss);
        let name = if t == HIDDEN { "hidden" } else { NAMES[t] };
        let analytic = if t == HIDDEN { dhidden } else { &grads[t][..] };
        let structural_zero = if pb.set.assignment == CombineAssignment::Attend {
            matches!(name, "w_k.bias" | "norm_e.bias")
        } else {
            matches!(name, "w_q.bias" | "norm_c.bias")
        };
        if structural_zero {
            let sibling = finite_differences(pb, t - 1, loss);
            let s = sibling.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            let worst = analytic
                .iter()
                .zip(&fd)
                .map(|(a, f)| (*a as f64 - f).abs())
                .fold(0.0, f64::max);
            let fd_max = fd.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            assert!(
                fd_max <= 1e-7 * s,
                "{what} {name}: finite-difference gradient {fd_max:e} not ~0"
            );
            assert!(
                worst <= 1e-4 * s,
                "{what} {name}: {worst:e} vs sibling scale {s:e}"
            );
            continue;
        }
        assert_close(&format!("{what} {name}"), analytic, &fd, 2e-5);
    }
}

/// The straight-through backward equals the gradient of the surrogate
/// F(θ) = L with HA := hard(θ0) + Sim(θ) − Sim(θ0), for every parameter and input.
#[test]
fn backward_matches_straight_through_surrogate() {
    for setup in SETUPS {
        let (seed, pb) = (setup.0, setup_problem(setup));
        let frozen = ref_forward(&pb, &pb.theta, None);
        let (_, _, grads, dhidden) = run_impl(&pb);
        let surrogate = |th: &[Vec<f64>]| ref_loss(&pb, th, Some(&frozen));
        check_every_gradient(&pb, &format!("setup {seed}"), &surrogate, &grads, &dhidden);
    }
}

/// Where the forward is differentiable (W_v, b_v, W_o, b_o do not move the
/// assignment), plain finite differences of the true forward must agree too.
#[test]
fn backward_matches_plain_fd_for_value_and_output() {
    for setup in SETUPS {
        let (seed, pb) = (setup.0, setup_problem(setup));
        let hard0 = ref_forward(&pb, &pb.theta, None).hard;
        let (_, _, grads, _) = run_impl(&pb);
        let loss = |th: &[Vec<f64>]| {
            let r = ref_forward(&pb, th, None);
            assert_eq!(
                r.hard, hard0,
                "a value/output perturbation moved an assignment"
            );
            r.out.iter().zip(&pb.loss_w).map(|(a, b)| a * b).sum()
        };
        for t in 8..12 {
            let fd = finite_differences(&pb, t, &loss);
            assert_close(
                &format!("setup {seed} {} (plain FD)", NAMES[t]),
                &grads[t],
                &fd,
                2e-5,
            );
        }
    }
}

#[test]
fn backward_accumulates_parameters_and_overwrites_input() {
    let pb = Problem::new(5, settings(1.0, 1.0, None));
    let CombinerDims { batch, n, m, d } = pb.dims;
    let p = pb.f32_params();
    let ids = CombinerIds::resolve(&p, d).expect("test store has every tensor");
    let hidden: Vec<f32> = pb.theta[HIDDEN].iter().map(|&x| x as f32).collect();
    let mut out = vec![0.0; batch * m * d];
    let (_, tape) = combiner_forward(
        &p, &ids, pb.dims, &pb.set, &hidden, &pb.real, &mut out, true,
    );
    let tape = tape.expect("recorded");
    let dout: Vec<f32> = pb.loss_w.iter().map(|&x| x as f32).collect();
    let mut grads = p.zeros_like();
    let mut first = vec![f32::NAN; batch * (n + m) * d];
    combiner_backward(&p, &ids, pb.dims, &tape, &dout, &mut first, &mut grads);
    let once = grads.clone();
    let mut second = vec![123.0; batch * (n + m) * d];
    combiner_backward(&p, &ids, pb.dims, &tape, &dout, &mut second, &mut grads);
    assert_eq!(first, second);
    for (t1, t2) in once.tensors.iter().zip(&grads.tensors) {
        for (a, b) in t1.data.iter().zip(&t2.data) {
            assert!(
                (2.0 * a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "{}: {a} then {b}",
                t1.name
            );
        }
    }
}

/// With `key_grad: false` the parameters' gradients and the combination tokens' rows are
/// unchanged, and each real token's gradient is its value path alone,
/// `W_vᵀ W_oᵀ g_{a(j)} / (n_{a(j)} + eps)` (token residual), in float64.
#[test]
fn stopped_key_gradient_leaves_the_value_path_only() {
    let setups = SETUPS.into_iter().filter(|s| s.4 == CombineResidual::Token);
    for setup in setups {
        let full = setup_problem(setup);
        let stopped = Problem::new(
            setup.0,
            CombinerSettings {
                key_grad: false,
                ..full.set
            },
        );
        let (assign, _, grads_full, dfull) = run_impl(&full);
        let (_, _, grads, dhidden) = run_impl(&stopped);
        assert_eq!(grads, grads_full, "setup {}: parameter gradients", setup.0);
        let CombinerDims { batch, n, m, d } = stopped.dims;
        let th = &stopped.theta;
        let mat_t = |w: &[f64], y: &[f64]| -> Vec<f64> {
            (0..d)
                .map(|i| (0..d).map(|o| w[o * d + i] * y[o]).sum())
                .collect()
        };
        let mut key_path_seen = false;
        for b in 0..batch {
            let count = |i: usize| {
                let row = &assign[b * n..(b + 1) * n];
                row.iter().filter(|&&a| a == i as i64).count() as f64
            };
            for r in 0..n + m {
                let x = (b * (n + m) + r) * d;
                let (got, other) = (&dhidden[x..x + d], &dfull[x..x + d]);
                if r >= n {
                    assert_eq!(got, other, "setup {}: combination token row", setup.0);
                    continue;
                }
                if !stopped.real[b * n + r] {
                    assert!(got.iter().all(|&g| g == 0.0), "padding row");
                    continue;
                }
                let i = assign[b * n + r] as usize;
                let g = &stopped.loss_w[(b * m + i) * d..(b * m + i + 1) * d];
                let want: Vec<f64> = mat_t(&th[8], &mat_t(&th[10], g))
                    .iter()
                    .map(|v| v / (count(i) + stopped.set.assign_eps as f64))
                    .collect();
                assert_close(&format!("setup {} row {b}/{r}", setup.0), got, &want, 1e-5);
                key_path_seen |= got != other;
            }
        }
        assert!(
            key_path_seen,
            "setup {}: the key path carried nothing",
            setup.0
        );
    }
}

/// (seed, scale, assign_eps, noise, residual) of the soft-assignment problems.
const SOFT_SETUPS: [(u64, f32, f32, Option<u64>, CombineResidual); 3] = [
    (21, 0.7, 1.0, Some(42), CombineResidual::Token),
    (22, 1.3, 0.5, None, CombineResidual::Token),
    (23, 1.0, 1.0, Some(7), CombineResidual::Group),
];

fn soft_problem(setup: (u64, f32, f32, Option<u64>, CombineResidual)) -> Problem {
    let pb = setup_problem(setup);
    Problem::new(
        setup.0,
        CombinerSettings {
            assignment: CombineAssignment::Soft,
            ..pb.set
        },
    )
}

/// The soft assignment (HA = Sim) is differentiable: its forward matches the float64
/// reference, and its backward the plain central differences of that forward, for every
/// parameter and the input.
#[test]
fn soft_assignment_matches_float64_reference_and_plain_fd() {
    for setup in SOFT_SETUPS {
        let (seed, pb) = (setup.0, soft_problem(setup));
        // (the returned assignment is still the argmax)
        let (_, out, grads, dhidden) = check_forward(&pb, &format!("setup {seed} (soft)"));
        // Soft differs from hard: the outputs are not the hard assignment's.
        let hard_out = run_impl(&setup_problem(setup)).1;
        assert!(
            out.iter().zip(&hard_out).any(|(a, b)| (a - b).abs() > 1e-3),
            "setup {seed}: soft and hard assignment give the same output"
        );
        let loss = |th: &[Vec<f64>]| ref_loss(&pb, th, None);
        check_every_gradient(
            &pb,
            &format!("setup {seed} (soft)"),
            &loss,
            &grads,
            &dhidden,
        );
    }
}

/// The attention weights (`CombineAssignment::Attend`, A = softmax over the tokens) are
/// differentiable: the forward matches the float64 reference, the groups are still the
/// argmax over the combination tokens, and the backward matches plain central
/// differences for every parameter and the input, with one head and with several.
#[test]
fn attention_weights_match_float64_reference_and_plain_fd() {
    for (setup, heads) in SOFT_SETUPS.into_iter().zip([1, 2, 4]) {
        let seed = setup.0;
        let base = setup_problem(setup);
        let pb = Problem::new(
            seed,
            CombinerSettings {
                assignment: CombineAssignment::Attend,
                heads,
                ..base.set
            },
        );
        let what = format!("setup {seed} (attend, {heads} heads)");
        let (assign, out, grads, dhidden) = check_forward(&pb, &what);
        // The groups are the hard assignment's, the output is not.
        let (hard_assign, hard_out, ..) = run_impl(&Problem::new(
            seed,
            CombinerSettings {
                assignment: CombineAssignment::Hard,
                ..pb.set
            },
        ));
        assert_eq!(assign, hard_assign, "{what}: groups");
        assert!(
            out.iter().zip(&hard_out).any(|(a, b)| (a - b).abs() > 1e-3),
            "{what}: attention and hard assignment give the same output"
        );
        let loss = |th: &[Vec<f64>]| ref_loss(&pb, th, None);
        check_every_gradient(&pb, &what, &loss, &grads, &dhidden);
    }
}

/// (seed, heads, assignment, noise, residual) of the several-head problems.
const HEAD_SETUPS: [(u64, usize, CombineAssignment, Option<u64>, CombineResidual); 4] = [
    (
        31,
        2,
        CombineAssignment::Hard,
        Some(42),
        CombineResidual::Token,
    ),
    (32, 4, CombineAssignment::Hard, None, CombineResidual::Group),
    (
        33,
        2,
        CombineAssignment::Soft,
        Some(7),
        CombineResidual::Token,
    ),
    (34, 4, CombineAssignment::Soft, None, CombineResidual::Group),
];

/// With several assignment heads, the forward matches the float64 reference (each head
/// groups on its own columns), the heads do assign differently, and the backward is the
/// straight-through surrogate's gradient (hard) or the plain one (soft) for every
/// parameter and the input.
#[test]
fn several_heads_match_float64_reference_and_gradients() {
    let mut heads_disagree = false;
    for (seed, heads, assignment, noise, residual) in HEAD_SETUPS {
        let set = CombinerSettings {
            heads,
            assignment,
            residual,
            ..settings(1.0, 1.0, noise)
        };
        let pb = Problem::new(seed, set);
        let what = format!("setup {seed} ({heads} heads, {assignment:?})");
        let (_, out, grads, dhidden) = check_forward(&pb, &what);
        let one_head = Problem::new(seed, CombinerSettings { heads: 1, ..set });
        assert!(
            out.iter()
                .zip(&run_impl(&one_head).1)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "{what}: the output is the one-head output"
        );
        let frozen = ref_forward(&pb, &pb.theta, None);
        let per_head = frozen.hard.len() / heads;
        heads_disagree |= (1..heads)
            .any(|h| frozen.hard[..per_head] != frozen.hard[h * per_head..(h + 1) * per_head]);
        let loss = |th: &[Vec<f64>]| match assignment {
            CombineAssignment::Hard => ref_loss(&pb, th, Some(&frozen)),
            CombineAssignment::Soft | CombineAssignment::Attend => ref_loss(&pb, th, None),
        };
        check_every_gradient(&pb, &what, &loss, &grads, &dhidden);
    }
    assert!(heads_disagree, "no setup's heads assign differently");
}

/// Assignment logits so far apart that part of Sim falls below 2^-126 (f32's subnormal
/// range, which cost microcode assists in every product meeting it): those values are
/// stored as 0, the backward still matches the surrogate's finite differences, and every
/// pool thread's floating-point mode is restored.
#[test]
fn underflowing_sim_values_are_zero_and_the_mode_is_restored() {
    let before = crate::kernels::fastmath::pool_fp_controls();
    let subnormal = |s: f64| s > 0.0 && (s as f32).is_subnormal();
    let mut seen = 0;
    for (seed, scale) in [(21, 30.0), (22, 45.0), (26, 45.0)] {
        let pb = Problem::new(seed, settings(scale, 1.0, None));
        let reference = ref_forward(&pb, &pb.theta, None);
        seen += reference.sim.iter().filter(|&&s| subnormal(s)).count();

        let tape = forward_impl(&pb).4;
        assert!(tape.sim.iter().all(|s| *s == 0.0 || s.is_normal()));

        let (_, _, grads, dhidden) = run_impl(&pb);
        assert!(dhidden.iter().all(|g| !g.is_subnormal()));
        let surrogate = |th: &[Vec<f64>]| ref_loss(&pb, th, Some(&reference));
        // Saturated, the query and key paths carry (almost) no gradient: where the
        // differences are ~0 the analytic gradient must be too, elsewhere within the
        // tolerance of the tests above. (Logits scaled this far amplify f32 rounding:
        // other seeds exceed it, by the same amount with or without the flush.)
        for t in 0..=HIDDEN {
            let fd = finite_differences(&pb, t, &surrogate);
            let analytic = grads.get(t).map_or(&dhidden[..], |g| &g[..]);
            let what = format!("scale {scale} variable {t}");
            let max_abs = |v: &[f64]| {
                v.iter()
                    .filter(|x| !x.is_nan())
                    .fold(0.0f64, |a, x| a.max(x.abs()))
            };
            if matches!(NAMES.get(t), Some(&("w_q.bias" | "norm_c.bias"))) {
                // Structural zeros (see `check_every_gradient`), on their sibling's scale
                // or, where that is ~0 too (saturated), below the same floor.
                let sibling = max_abs(&finite_differences(&pb, t - 1, &surrogate));
                let worst = analytic.iter().fold(0.0f64, |a, x| a.max(x.abs() as f64));
                let bound = (1e-4 * sibling).max(1e-6);
                assert!(worst <= bound, "{what}: {worst:e} vs {sibling:e}");
            } else if max_abs(&fd) > 1e-6 {
                assert_close(&what, analytic, &fd, 2e-5);
            } else {
                assert!(analytic.iter().all(|a| a.abs() <= 1e-6), "{what}: not ~0");
            }
        }
    }
    assert!(seen > 0, "no Sim value fell into the subnormal range");
    assert_eq!(crate::kernels::fastmath::pool_fp_controls(), before);
}
