//! Token selection between pruned layers (method.md): plain ratio pruning (P) and fuzzy
//! protection (PF). Pure functions: scores in, kept positions out.
//!
//! Numerics follow the PyTorch reference that wrote the golden files, so that decisions
//! agree exactly: scores arrive as f32 but sums, percentiles and memberships are
//! computed in f64, and the f32 settings (keep ratio, percentiles, thresholds) are turned
//! into the f64 of their shortest decimal form (`0.7f32` -> `0.7f64`), which is what the
//! reference's Python floats were. See `keep_count` for why this matters.

use crate::profile::{timed, Kernel};

/// Settings of one selection step.
#[derive(Clone, Copy, Debug)]
pub struct SelectConfig {
    pub keep_ratio: f32,
    pub fuzzy: bool,
    pub pct_low: f32,
    pub pct_high: f32,
    pub imp_thresh: f32,
    pub unimp_thresh: f32,
}

/// The outcome of one selection step for one example.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Positions kept for the next layer, ascending (a subset of the candidates).
    pub kept: Vec<usize>,
    /// `floor(t * p)` clamped to at least 1: how many the ratio asked to keep.
    pub n_requested: usize,
    /// Per candidate (same order as the input): Σ_h S_h(j).
    pub head_sum: Vec<f32>,
    /// Per candidate: removed in this step.
    pub pruned: Vec<bool>,
    /// Fuzzy only (else empty / 0): percentiles a, b, per-candidate Importance and
    /// protection.
    pub a: f32,
    pub b: f32,
    pub importance: Vec<f32>,
    pub protected: Vec<bool>,
}

/// Below this spread of the percentiles the membership functions are undefined
/// (method.md): protection falls back to `s > a`.
const DEGENERATE_SPREAD: f64 = 1e-12;

/// The f64 whose shortest decimal form is that of `x` (`0.7f32` -> `0.7f64`, not
/// `0.699999988079071f64`). Settings are typed by users as decimals and the reference
/// used them as Python floats, so this is the value they mean.
pub fn decimal_f64(x: f32) -> f64 {
    // Display of f32 prints the shortest decimal that round-trips, which always parses.
    format!("{x}").parse::<f64>().unwrap_or(x as f64)
}

/// How many of `t` candidates the ratio asks to keep: `max(1, floor(t * p))`, at most `t`
/// (and 0 for `t = 0`).
///
/// The product is taken in f64 with `p` as the f64 of its decimal form, exactly as the
/// Python reference computed `floor(t * 0.7)`. Widening the f32 directly would give
/// `floor(10 * 0.699999988) = 6` instead of 7; the f64 product matches Python bit for bit,
/// including its rounding (e.g. `floor(90 * 0.7) = 62` in Python, not 63).
pub fn keep_count(t: usize, keep_ratio: f32) -> usize {
    if t == 0 {
        return 0;
    }
    let want = (t as f64 * decimal_f64(keep_ratio)).floor();
    // `want` is finite and >= 0 for a ratio in (0, 1]; the clamp guards odd settings.
    (want.max(1.0) as usize).min(t)
}

/// Percentile `pct` (0..=100) of `values` with linear interpolation, as numpy's default
/// (`method="linear"`): position `q (n - 1)` of the ascending order, between neighbours,
/// and numpy's two-sided lerp (from the upper neighbour when the fraction is >= 0.5),
/// in f64 (the f32 values widen exactly). Panics on an empty slice (a programming error:
/// an example always has a candidate).
pub fn percentile(values: &[f32], pct: f64) -> f64 {
    percentile_pair(values, pct, pct).0
}

/// The percentiles `pct_low` and `pct_high` of `values`, as [`percentile`] takes each.
/// The neighbouring order statistics are selected in linear time rather than sorting
/// (the fuzzy step takes two percentiles of every head's scores, per example and layer),
/// on integer keys ordered as `f32::total_cmp`, and the second search runs only over
/// the values above the first's position.
fn percentile_pair(values: &[f32], pct_low: f64, pct_high: f64) -> (f64, f64) {
    let mut keys: Vec<u32> = values.iter().map(|&x| order_key(x)).collect();
    let (lo_a, hi_a, frac_a) = percentile_position(keys.len(), pct_low);
    let (lo_b, hi_b, frac_b) = percentile_position(keys.len(), pct_high);
    let (a0, a1) = neighbours(&mut keys, 0, lo_a, hi_a);
    // After the first search keys[..=lo_a] <= keys[lo_a + 1..].
    let start = if lo_b > lo_a { lo_a + 1 } else { 0 };
    let (b0, b1) = neighbours(&mut keys, start, lo_b, hi_b);
    let value = |key: u32| from_order_key(key) as f64;
    (
        numpy_lerp(value(a0), value(a1), frac_a),
        numpy_lerp(value(b0), value(b1), frac_b),
    )
}

/// The `lo`-th smallest of `keys` and the `hi`-th (`hi` is `lo` or `lo + 1`), searching
/// `keys[start..]` (every key before `start` must be at most every key from it on, and
/// `start <= lo`); leaves keys[..=lo] <= keys[lo + 1..].
fn neighbours(keys: &mut [u32], start: usize, lo: usize, hi: usize) -> (u32, u32) {
    let (_, &mut x0, above) = keys[start..].select_nth_unstable(lo - start);
    // The next order statistic is the least of those above the `lo`-th.
    let x1 = match above.iter().copied().min() {
        Some(x1) if hi > lo => x1,
        _ => x0,
    };
    (x0, x1)
}

/// `x`'s bits mapped so that their unsigned order is `f32::total_cmp`'s order (negative
/// values reversed below the positive ones).
fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The inverse of [`order_key`].
fn from_order_key(key: u32) -> f32 {
    f32::from_bits(if key >> 31 == 1 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

/// The neighbours `lo`, `hi` of position `q (n - 1)` and the fraction between them.
fn percentile_position(n: usize, pct: f64) -> (usize, usize, f64) {
    assert!(n > 0, "percentile of an empty set");
    let pos = (pct / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = (pos.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    (lo, hi, pos - lo as f64)
}

/// numpy's two-sided lerp between neighbours `x0 <= x1`.
fn numpy_lerp(x0: f64, x1: f64, frac: f64) -> f64 {
    let diff = x1 - x0;
    if frac >= 0.5 {
        x1 - diff * (1.0 - frac)
    } else {
        x0 + diff * frac
    }
}

/// Fuzzy membership of mean scores `s` given percentiles `a <= b`: per candidate its
/// Importance and whether it is protected (`Importance >= imp_thresh` and not
/// `Unimportance >= unimp_thresh`). With `b - a < 1e-12`, protected = `s > a` and the
/// reported Importance is 1 for those and 0 otherwise (as the reference reports it).
fn fuzzy_membership(
    s: &[f64],
    a: f64,
    b: f64,
    imp_thresh: f64,
    unimp_thresh: f64,
) -> (Vec<f64>, Vec<bool>) {
    let spread = b - a;
    if spread < DEGENERATE_SPREAD {
        let protected: Vec<bool> = s.iter().map(|&x| x > a).collect();
        let importance = protected
            .iter()
            .map(|&p| if p { 1.0 } else { 0.0 })
            .collect();
        return (importance, protected);
    }
    let importance: Vec<f64> = s
        .iter()
        .map(|&x| ((x - a) / spread).clamp(0.0, 1.0))
        .collect();
    let protected = importance
        .iter()
        .map(|&imp| {
            let important = imp >= imp_thresh;
            let unimportant = 1.0 - imp >= unimp_thresh;
            important && !unimportant
        })
        .collect();
    (importance, protected)
}

/// Which candidates to remove: up to `n_remove` of the unprotected ones (`protected` empty
/// = none protected), lowest score first; on equal scores the higher position goes first.
/// `total_cmp` makes the order total (and deterministic) even for NaN, which softmax
/// scores never are.
fn removal_mask(score: &[f64], protected: &[bool], n_remove: usize) -> Vec<bool> {
    let t = score.len();
    let is_protected = |j: usize| protected.get(j).copied().unwrap_or(false);
    let mut removal_order: Vec<usize> = (0..t).filter(|&j| !is_protected(j)).collect();
    // The order is total (ties by position), so the first `n_remove` are one definite
    // set; selecting it is enough, their order among themselves does not matter.
    if n_remove < removal_order.len() {
        removal_order.select_nth_unstable_by(n_remove, |&x, &y| {
            score[x].total_cmp(&score[y]).then(y.cmp(&x))
        });
    }
    let mut pruned = vec![false; t];
    for &j in removal_order.iter().take(n_remove) {
        pruned[j] = true;
    }
    pruned
}

/// Selects which of `candidates` (token positions, ascending, `t` of them) stay as keys
/// and values in the next layer, from `head_scores` `[heads, t]` = S_h(j).
///
/// Rules (method.md, "Fuzzy token-pruned self-attention"):
/// * `s(j)` = mean over heads of S_h(j). Ranking uses the head sum Σ_h S_h(j) (same order;
///   it is what `Selection::head_sum` reports and the golden files store).
/// * The ratio keeps `n_requested = max(1, floor(t * p))` (see `keep_count`), i.e. asks to
///   remove `t - n_requested`.
/// * P (`cfg.fuzzy == false`): the `t - n_requested` lowest-scored candidates are removed;
///   equal scores remove the higher position first, so ties are kept at the lower
///   position.
/// * PF: `a`, `b` = the `pct_low` / `pct_high` percentiles (numpy linear) of all per-head
///   scores of this example (every head x every candidate);
///   `Importance(s) = clamp((s - a) / (b - a), 0, 1)`, `Unimportance = 1 - Importance`;
///   protected = `{Importance >= imp_thresh} - {Unimportance >= unimp_thresh}`, or
///   `{s > a}` when `b - a < 1e-12`. The removal is the same as P's but among the
///   unprotected candidates only; when fewer are unprotected, fewer are removed, so
///   `kept.len()` may exceed `n_requested`.
///
/// Sums, percentiles and memberships are computed in f64 (see the module docs).
///
/// The caller passes only the real tokens currently kept: padding never reaches this
/// function, nor do combination tokens (they are never pruned). `t = 0` returns an empty
/// selection. Panics if `head_scores` is not `[heads, t]` (a programming error).
pub fn select(
    candidates: &[usize],
    head_scores: &[f32],
    heads: usize,
    cfg: &SelectConfig,
) -> Selection {
    let t = candidates.len();
    assert!(heads > 0, "select: zero heads");
    assert_eq!(
        head_scores.len(),
        heads * t,
        "select: head_scores is not [heads, t]"
    );
    debug_assert!(
        candidates.windows(2).all(|w| w[0] < w[1]),
        "select: candidates not ascending"
    );

    let head_sum: Vec<f64> = (0..t)
        .map(|j| (0..heads).map(|h| head_scores[h * t + j] as f64).sum())
        .collect();
    let n_requested = keep_count(t, cfg.keep_ratio);

    let (a, b, importance, protected) = if cfg.fuzzy && t > 0 {
        let (a, b) = percentile_pair(
            head_scores,
            decimal_f64(cfg.pct_low),
            decimal_f64(cfg.pct_high),
        );
        let mean_score: Vec<f64> = head_sum.iter().map(|&s| s / heads as f64).collect();
        let (importance, protected) = fuzzy_membership(
            &mean_score,
            a,
            b,
            decimal_f64(cfg.imp_thresh),
            decimal_f64(cfg.unimp_thresh),
        );
        (a, b, importance, protected)
    } else {
        (0.0, 0.0, Vec::new(), Vec::new())
    };

    let pruned = removal_mask(&head_sum, &protected, t - n_requested);

    Selection {
        kept: candidates
            .iter()
            .zip(&pruned)
            .filter(|(_, &p)| !p)
            .map(|(&c, _)| c)
            .collect(),
        n_requested,
        head_sum: head_sum.iter().map(|&s| s as f32).collect(),
        pruned,
        a: a as f32,
        b: b as f32,
        importance: importance.iter().map(|&x| x as f32).collect(),
        protected,
    }
}

/// The pruning step after a layer, for a batch: example `b`'s candidates are `kept[b]`
/// (ascending), and their scores the first `kept[b].len()` key slots of its rows of
/// `importance` (`[batch, heads, kmax]`, S_h of each key slot; the combination tokens'
/// slots come after the candidates and are never pruned). One [`select`] per example.
pub fn select_batch(
    importance: &[f32],
    kmax: usize,
    kept: &[Vec<usize>],
    heads: usize,
    cfg: &SelectConfig,
) -> Vec<Selection> {
    kept.iter()
        .enumerate()
        .map(|(b, cands)| {
            let tk = cands.len();
            let mut scores = vec![0.0f32; heads * tk];
            for h in 0..heads {
                let src = &importance[(b * heads + h) * kmax..][..tk];
                scores[h * tk..(h + 1) * tk].copy_from_slice(src);
            }
            timed(Kernel::Selection, || select(cands, &scores, heads, cfg))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_p(keep_ratio: f32) -> SelectConfig {
        SelectConfig {
            keep_ratio,
            fuzzy: false,
            pct_low: 25.0,
            pct_high: 75.0,
            imp_thresh: 0.01,
            unimp_thresh: 0.9,
        }
    }

    fn cfg_pf(keep_ratio: f32) -> SelectConfig {
        SelectConfig {
            fuzzy: true,
            ..cfg_p(keep_ratio)
        }
    }

    /// Positions 0..t with one head holding `scores`.
    fn select_one_head(scores: &[f32], cfg: &SelectConfig) -> Selection {
        let cand: Vec<usize> = (0..scores.len()).collect();
        select(&cand, scores, 1, cfg)
    }

    #[test]
    fn keep_count_matches_python_floor_for_p_0_7() {
        // Python: [t for t in range(1, 4097) if math.floor(t * 0.7) != (7 * t) // 10];
        // at these t the f64 product rounds just below the integer 7t/10.
        const PY_BELOW_EXACT: [usize; 70] = [
            90, 170, 180, 330, 340, 350, 360, 650, 660, 670, 680, 690, 700, 710, 720, 730, 1290,
            1300, 1310, 1320, 1330, 1340, 1350, 1360, 1370, 1380, 1390, 1400, 1410, 1420, 1430,
            1440, 1450, 1460, 2570, 2580, 2590, 2600, 2610, 2620, 2630, 2640, 2650, 2660, 2670,
            2680, 2690, 2700, 2710, 2720, 2730, 2740, 2750, 2760, 2770, 2780, 2790, 2800, 2810,
            2820, 2830, 2840, 2850, 2860, 2870, 2880, 2890, 2900, 2910, 2920,
        ];
        for t in 1..=4096usize {
            let exact = (7 * t) / 10;
            let python = if PY_BELOW_EXACT.contains(&t) {
                exact - 1
            } else {
                exact
            };
            assert_eq!(keep_count(t, 0.7), python.max(1), "t = {t}");
        }
        // The naive widening of 0.7f32 would be wrong already at t = 10.
        assert_eq!(((10.0f64) * (0.7f32 as f64)).floor(), 6.0);
        assert_eq!(keep_count(10, 0.7), 7);
    }

    #[test]
    fn keep_count_clamps() {
        assert_eq!(keep_count(0, 0.7), 0);
        assert_eq!(keep_count(1, 0.7), 1); // floor(0.7) = 0 -> max(1, 0)
        assert_eq!(keep_count(2, 0.1), 1);
        assert_eq!(keep_count(3, 0.7), 2);
        assert_eq!(keep_count(22, 0.7), 15);
        assert_eq!(keep_count(10, 0.9), 9);
        assert_eq!(keep_count(17, 1.0), 17);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        // Given in descending order: `percentile` must not rely on the input's order.
        let pct = |values: &[f32], q: f64| {
            let v: Vec<f32> = values.iter().rev().copied().collect();
            percentile(&v, q)
        };
        // numpy.percentile([1, 2, 3, 4], [25, 50, 75]) = [1.75, 2.5, 3.25]
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pct(&x, 25.0), 1.75);
        assert_eq!(pct(&x, 50.0), 2.5);
        assert_eq!(pct(&x, 75.0), 3.25);
        // numpy.percentile([0, 10, 30], [25, 75]) = [5, 20]; position hits no element.
        let y = [0.0, 10.0, 30.0];
        assert_eq!(pct(&y, 25.0), 5.0);
        assert_eq!(pct(&y, 75.0), 20.0);
        // numpy.percentile([0, 1, 2, 3, 4], 25) = 1 (exact element), 0 and 100 are the ends.
        let z = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(pct(&z, 25.0), 1.0);
        assert_eq!(pct(&z, 0.0), 0.0);
        assert_eq!(pct(&z, 100.0), 4.0);
        // numpy.percentile([2, 7, 9, 20, 21, 40], 30) = 8.0 (pos 1.5), 90 -> 30.5 (pos 4.5)
        let w = [2.0, 7.0, 9.0, 20.0, 21.0, 40.0];
        assert_eq!(pct(&w, 30.0), 8.0);
        assert_eq!(pct(&w, 90.0), 30.5);
        assert_eq!(pct(&[5.0], 25.0), 5.0);
    }

    #[test]
    fn percentile_by_selection_equals_percentile_of_the_sorted_values() {
        // Scores with many exact ties, both signed zeros (`total_cmp` orders -0 < +0) and
        // negative values (never softmax scores, but the order must hold for them too),
        // at the sizes the fuzzy step sees (heads x candidates) and small ones.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for n in [1usize, 2, 3, 7, 64, 1536, 6144] {
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    match state >> 61 {
                        0 => 0.0,
                        1 => -0.0,
                        2 => -(((state >> 40) % 97) as f32) / 1024.0,
                        _ => ((state >> 40) % 97) as f32 / 1024.0,
                    }
                })
                .collect();
            let mut sorted: Vec<f64> = values.iter().map(|&x| x as f64).collect();
            sorted.sort_by(f64::total_cmp);
            let qs = [0.0, 0.1, 12.5, 25.0, 33.3, 50.0, 75.0, 90.0, 99.9, 100.0];
            let want = |q: f64| {
                let (lo, hi, frac) = percentile_position(n, q);
                numpy_lerp(sorted[lo], sorted[hi], frac)
            };
            for q in qs {
                let got = percentile(&values, q);
                assert_eq!(got.to_bits(), want(q).to_bits(), "n {n} q {q}");
            }
            // Pairs in either order (the second search reuses the first's partition).
            for (low, high) in [(25.0, 75.0), (0.0, 100.0), (50.0, 50.0), (90.0, 12.5)] {
                let (a, b) = percentile_pair(&values, low, high);
                assert_eq!(a.to_bits(), want(low).to_bits(), "n {n} pair {low}, {high}");
                assert_eq!(
                    b.to_bits(),
                    want(high).to_bits(),
                    "n {n} pair {low}, {high}"
                );
            }
        }
    }

    #[test]
    fn plain_keeps_highest_with_ties_to_lower_position() {
        // t = 5, p = 0.6 -> keep 3. Scores: positions 1, 2, 4 tie at 0.5.
        let s = [0.9, 0.5, 0.5, 0.1, 0.5];
        let sel = select_one_head(&s, &cfg_p(0.6));
        assert_eq!(sel.n_requested, 3);
        assert_eq!(sel.kept, vec![0, 1, 2]);
        assert_eq!(sel.pruned, vec![false, false, false, true, true]);
        assert!(sel.importance.is_empty() && sel.protected.is_empty());
        // All equal: the lowest positions survive.
        let sel = select_one_head(&[1.0; 6], &cfg_p(0.5));
        assert_eq!(sel.kept, vec![0, 1, 2]);
    }

    #[test]
    fn plain_uses_candidate_positions_and_head_sum() {
        // Two heads disagree; the sum decides: position sums 10: 0.3, 12: 0.9, 15: 0.6, 20: 0.2.
        let cand = [10, 12, 15, 20];
        let scores = [0.1, 0.8, 0.2, 0.1, 0.2, 0.1, 0.4, 0.1];
        let sel = select(&cand, &scores, 2, &cfg_p(0.5));
        assert_eq!(sel.n_requested, 2);
        assert_eq!(sel.kept, vec![12, 15]);
        let want = [0.3f32, 0.9, 0.6, 0.2];
        for (g, w) in sel.head_sum.iter().zip(want) {
            assert!((g - w).abs() < 1e-6);
        }
    }

    #[test]
    fn single_candidate_is_kept() {
        for cfg in [cfg_p(0.7), cfg_pf(0.7), cfg_p(0.1)] {
            let sel = select(&[4], &[0.25, 1.0, 0.5], 3, &cfg);
            assert_eq!(sel.n_requested, 1);
            assert_eq!(sel.kept, vec![4]);
            assert_eq!(sel.pruned, vec![false]);
        }
        let empty = select(&[], &[], 2, &cfg_pf(0.7));
        assert!(empty.kept.is_empty() && empty.n_requested == 0);
    }

    #[test]
    fn max_one_floor_keeps_one() {
        // t = 3, p = 0.2: floor(0.6) = 0 -> keep 1, the best.
        let sel = select_one_head(&[0.2, 0.7, 0.1], &cfg_p(0.2));
        assert_eq!(sel.n_requested, 1);
        assert_eq!(sel.kept, vec![1]);
    }

    #[test]
    fn fuzzy_protects_and_prunes_only_unprotected() {
        // One head, t = 8, scores 0..7 (/10). Percentiles over 8 values: a = 0.175,
        // b = 0.525 (pos 1.75, 5.25); protected iff s > a + 0.1 (b - a) = 0.21, i.e.
        // positions 3..7. p = 0.5 asks to remove 4, but only 0, 1, 2 are unprotected.
        let s: Vec<f32> = (0..8).map(|i| i as f32 / 10.0).collect();
        let sel = select_one_head(&s, &cfg_pf(0.5));
        assert!(
            (sel.a - 0.175).abs() < 1e-6 && (sel.b - 0.525).abs() < 1e-6,
            "{} {}",
            sel.a,
            sel.b
        );
        assert_eq!(
            sel.protected,
            vec![false, false, false, true, true, true, true, true]
        );
        assert_eq!(sel.n_requested, 4);
        assert_eq!(sel.kept, vec![3, 4, 5, 6, 7]);
        // Importance = clamp((s - a)/(b - a)): position 3 -> (0.3 - 0.175)/0.35.
        assert!((sel.importance[3] - 0.125 / 0.35).abs() < 1e-6);
        assert_eq!(sel.importance[0], 0.0);
        assert_eq!(sel.importance[7], 1.0);
        // A milder ratio removes only the lowest unprotected ones.
        let sel = select_one_head(&s, &cfg_pf(0.8)); // keep 6 -> remove 2
        assert_eq!(sel.kept, vec![2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn fuzzy_percentiles_pool_all_heads() {
        // Two heads, three candidates: pooled values {0, 0.1, 0.2, 0.6, 0.7, 0.8} give
        // a = 0.125, b = 0.675 (pos 1.25, 3.75). Means: 0.3, 0.45, 0.45 -> all above
        // a + 0.1 (b - a) = 0.18: everything protected, nothing pruned.
        let scores = [0.0, 0.1, 0.2, 0.6, 0.8, 0.7];
        let sel = select(&[0, 1, 2], &scores, 2, &cfg_pf(0.34));
        assert!(
            (sel.a - 0.125).abs() < 1e-6 && (sel.b - 0.675).abs() < 1e-6,
            "{} {}",
            sel.a,
            sel.b
        );
        assert_eq!(sel.n_requested, 1);
        assert_eq!(sel.protected, vec![true, true, true]);
        assert_eq!(sel.kept, vec![0, 1, 2]);
        assert_eq!(sel.pruned, vec![false; 3]);
    }

    #[test]
    fn fuzzy_ties_remove_higher_position_first() {
        // Scores 0,0,0,0,0 then 1,1,1: a = 0, b = 1 (pos 1.75 -> 0, pos 5.25 -> 1);
        // the five zeros are unprotected; p = 0.5 removes 4 of them: positions 4, 3, 2, 1.
        let s = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let sel = select_one_head(&s, &cfg_pf(0.5));
        assert_eq!(sel.kept, vec![0, 5, 6, 7]);
    }

    #[test]
    fn removal_by_selection_equals_removal_in_sorted_order() {
        // Few distinct scores (many ties), some candidates protected, every n_remove.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        for t in [1usize, 5, 40, 128] {
            let score: Vec<f64> = (0..t).map(|_| (next() % 6) as f64).collect();
            let protected: Vec<bool> = (0..t).map(|_| next() % 4 == 0).collect();
            let mut order: Vec<usize> = (0..t).filter(|&j| !protected[j]).collect();
            order.sort_by(|&x, &y| score[x].total_cmp(&score[y]).then(y.cmp(&x)));
            for n_remove in 0..=t {
                let mut want = vec![false; t];
                for &j in order.iter().take(n_remove) {
                    want[j] = true;
                }
                assert_eq!(removal_mask(&score, &protected, n_remove), want, "t {t}");
            }
        }
    }

    #[test]
    fn fuzzy_degenerate_spread_protects_above_a() {
        // 6 of 8 scores equal: a = b = 0.5 -> protect s > 0.5 (position 6), importance
        // 1/0. p = 0.25 asks to remove 6: the unprotected are 0..5 and 7 (0.1), so 7 goes
        // first, then the tied 0.5s from the highest position down.
        let s = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.1];
        let sel = select_one_head(&s, &cfg_pf(0.25));
        assert_eq!((sel.a, sel.b), (0.5, 0.5));
        assert_eq!(
            sel.protected,
            vec![false, false, false, false, false, false, true, false]
        );
        assert_eq!(sel.importance, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(sel.n_requested, 2);
        assert_eq!(sel.kept, vec![0, 6]);
        // All equal: nothing protected, plain ratio pruning.
        let sel = select_one_head(&[0.25; 4], &cfg_pf(0.5));
        assert!(sel.protected.iter().all(|&p| !p));
        assert_eq!(sel.kept, vec![0, 1]);
    }

    #[test]
    fn deterministic() {
        let mut rng = crate::rng::Rng::new(11);
        let heads = 4;
        let cand: Vec<usize> = (0..40).map(|i| 3 * i + 1).collect();
        let scores: Vec<f32> = (0..heads * cand.len())
            .map(|_| (rng.uniform() as f32 * 8.0).round() / 8.0)
            .collect();
        for cfg in [cfg_p(0.7), cfg_pf(0.7)] {
            let first = select(&cand, &scores, heads, &cfg);
            for _ in 0..3 {
                assert_eq!(select(&cand, &scores, heads, &cfg), first);
            }
            assert!(first.kept.len() >= first.n_requested);
            assert_eq!(
                first.kept.len() + first.pruned.iter().filter(|&&p| p).count(),
                cand.len()
            );
        }
    }

    // ----- golden decisions (P.safetensors, PF.safetensors) -----

    use crate::model::golden::Golden as GoldenFile;

    /// Candidates of decision `s`, example `b`: the positions with a score (not NaN).
    fn golden_candidates(
        head_sum: &[f32],
        s: usize,
        b: usize,
        batch: usize,
        n: usize,
    ) -> Vec<usize> {
        let row = &head_sum[(s * batch + b) * n..(s * batch + b + 1) * n];
        (0..n).filter(|&j| !row[j].is_nan()).collect()
    }

    #[test]
    fn golden_plain_decisions() {
        let g = GoldenFile::open("P.safetensors");
        let (shape, head_sum) = g.f32s("scores_head_sum");
        let (decisions, batch, n) = (shape[0], shape[1], shape[2]);
        assert_eq!((decisions, batch, n), (5, 3, 22));
        let (_, pruned) = g.i64s("pruned");
        let (_, n_remove) = g.i64s("n_requested"); // the golden counts tokens to remove
        let (_, kept_idx) = g.i64s("kept_idx");
        let cfg = cfg_p(0.7);
        for s in 0..decisions {
            for b in 0..batch {
                let cand = golden_candidates(&head_sum, s, b, batch, n);
                // For P the head sum alone decides: pass it as a single head.
                let row = (s * batch + b) * n;
                let scores: Vec<f32> = cand.iter().map(|&j| head_sum[row + j]).collect();
                let sel = select(&cand, &scores, 1, &cfg);
                assert_eq!(
                    (cand.len() - sel.n_requested) as i64,
                    n_remove[s * batch + b],
                    "decision {s} example {b}"
                );
                for (k, &j) in cand.iter().enumerate() {
                    assert_eq!(
                        sel.pruned[k] as i64,
                        pruned[row + j],
                        "decision {s} example {b} position {j}"
                    );
                }
                // The kept list is the next layer's keys (kept_idx row s + 1).
                let next = &kept_idx[((s + 1) * batch + b) * n..((s + 1) * batch + b + 1) * n];
                let want: Vec<usize> = next
                    .iter()
                    .filter(|&&x| x >= 0)
                    .map(|&x| x as usize)
                    .collect();
                assert_eq!(sel.kept, want, "decision {s} example {b}");
                // Candidates of this decision are the kept list of its layer.
                let this = &kept_idx[(s * batch + b) * n..(s * batch + b + 1) * n];
                let want_cand: Vec<usize> = this
                    .iter()
                    .filter(|&&x| x >= 0)
                    .map(|&x| x as usize)
                    .collect();
                assert_eq!(cand, want_cand);
            }
        }
    }

    /// PF's golden lacks per-head scores, so the percentiles cannot be recomputed here
    /// (the full-model test covers them). Given the golden a and b, the membership, the
    /// protection and the restricted removal must reproduce the golden decisions.
    #[test]
    fn golden_fuzzy_membership_and_removal() {
        let g = GoldenFile::open("PF.safetensors");
        let (shape, head_sum) = g.f32s("scores_head_sum");
        let (decisions, batch, n) = (shape[0], shape[1], shape[2]);
        let (_, fa) = g.f32s("fuzzy_a");
        let (_, fb) = g.f32s("fuzzy_b");
        let (_, importance) = g.f32s("importance");
        let (_, protected) = g.i64s("protected");
        let (_, pruned) = g.i64s("pruned");
        let (_, n_remove) = g.i64s("n_requested");
        let (_, n_pruned) = g.i64s("n_pruned");
        let cfg = cfg_pf(0.7);
        let heads = 12.0;
        for s in 0..decisions {
            for b in 0..batch {
                let row = (s * batch + b) * n;
                let cand = golden_candidates(&head_sum, s, b, batch, n);
                let sums: Vec<f64> = cand.iter().map(|&j| head_sum[row + j] as f64).collect();
                let means: Vec<f64> = sums.iter().map(|x| x / heads).collect();
                let (a, bb) = (fa[s * batch + b] as f64, fb[s * batch + b] as f64);
                let (imp, prot) = fuzzy_membership(
                    &means,
                    a,
                    bb,
                    decimal_f64(cfg.imp_thresh),
                    decimal_f64(cfg.unimp_thresh),
                );
                let t = cand.len();
                let n_keep = keep_count(t, cfg.keep_ratio);
                assert_eq!((t - n_keep) as i64, n_remove[s * batch + b]);
                let removed = removal_mask(&sums, &prot, t - n_keep);
                let count = removed.iter().filter(|&&r| r).count();
                assert_eq!(
                    count as i64,
                    n_pruned[s * batch + b],
                    "decision {s} example {b}"
                );
                for (k, &j) in cand.iter().enumerate() {
                    let ctx = format!("decision {s} example {b} position {j}");
                    assert!(
                        (imp[k] - importance[row + j] as f64).abs() < 2e-5,
                        "{ctx}: {} vs {}",
                        imp[k],
                        importance[row + j]
                    );
                    assert_eq!(prot[k] as i64, protected[row + j], "{ctx}");
                    assert_eq!(removed[k] as i64, pruned[row + j], "{ctx}");
                }
            }
        }
    }
}
