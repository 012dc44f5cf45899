//! Branch-free `exp` and normal-tail approximations that the compiler can vectorise, and a
//! runtime switch that runs hot loops compiled for AVX-512 or AVX2 when the CPU has it.
//!
//! Every operation here is exactly rounded (plain `*` and `+`, and `mul_add`, a fused
//! multiply-add, in the normal density and tail), so the AVX-512, AVX2 and baseline builds
//! of a loop produce bit-identical results: the choice of path only changes speed.

/// Defines a function whose body is compiled three times: with AVX-512 (16 f32 lanes),
/// with AVX2 and FMA (8 lanes) and for the baseline target; the widest copy the CPU runs
/// is used (AVX-512 where the GEMM uses it: `COREFOCUS_GEMM_ISA=avx2` keeps AVX2). The
/// body is duplicated textually (rather than passed as a closure) so that the compiler
/// vectorises it inside each copy instead of outlining it.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? $body
                if $crate::kernels::gemm_x86::Isa::best() == $crate::kernels::gemm_x86::Isa::Avx512
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the features `avx512` was compiled for were just detected
                    // (AVX-512F by `Isa::best`).
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? $body
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features `avx2` was compiled for were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            fn baseline($($arg: $ty),*) $(-> $ret)? $body
            baseline($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// While alive, the calling thread's SSE/AVX arithmetic treats subnormal (denormal)
/// inputs as zero and flushes subnormal results to zero (MXCSR's DAZ and FTZ bits); the
/// previous mode comes back on drop. Attention and the combiner's assignment need it: a
/// trained model's softmax rows span more than 87 nats, so e^(s - max) underflows into
/// the subnormal range for some entries, and on Intel a multiply that meets such a value
/// takes a microcode assist (measured in docs/results.md, sessions 12 and 13). Values
/// below 2^-126 (1.2e-38) are then exactly 0, which changes no sum by more than its
/// rounding.
///
/// Hold it only across code that runs no other task on the thread (no rayon calls
/// inside): the mode is per thread.
pub(crate) struct SubnormalsAsZero {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

/// MXCSR bits: DAZ (denormals are zero, bit 6) and FTZ (flush to zero, bit 15).
#[cfg(target_arch = "x86_64")]
const DAZ_FTZ: u32 = (1 << 6) | (1 << 15);

#[cfg(target_arch = "x86_64")]
pub(crate) fn read_mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stmxcsr stores the 4-byte MXCSR register to the given address, a local;
    // every x86_64 CPU has SSE.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
    }
    csr
}

/// MXCSR's control bits (rounding, exception masks, DAZ, FTZ) without its sticky status
/// flags, which any operation on any thread may set: what [`SubnormalsAsZero`] must
/// leave as it found it.
#[cfg(all(test, target_arch = "x86_64"))]
fn fp_control() -> u32 {
    read_mxcsr() & !0x3f
}

/// Every pool thread's floating-point control bits (empty where there is no MXCSR): the
/// tests of `SubnormalsAsZero`'s users check that a pass leaves them as it found them.
#[cfg(test)]
pub(crate) fn pool_fp_controls() -> Vec<u32> {
    #[cfg(target_arch = "x86_64")]
    return rayon::broadcast(|_| fp_control());
    #[cfg(not(target_arch = "x86_64"))]
    Vec::new()
}

#[cfg(target_arch = "x86_64")]
fn write_mxcsr(csr: u32) {
    // SAFETY: ldmxcsr loads MXCSR from the given address; the values written here are
    // a value read from MXCSR, or one with only the DAZ and FTZ bits added (FTZ is part
    // of SSE; DAZ predates 64-bit mode, so every x86_64 CPU accepts it).
    unsafe {
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
    }
}

impl SubnormalsAsZero {
    pub(crate) fn new() -> SubnormalsAsZero {
        #[cfg(target_arch = "x86_64")]
        {
            let saved = read_mxcsr();
            write_mxcsr(saved | DAZ_FTZ);
            SubnormalsAsZero { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        SubnormalsAsZero {}
    }
}

impl Drop for SubnormalsAsZero {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        write_mxcsr(self.saved);
    }
}

/// `2^a` in f32 for `a <= 0` (the softmax's exponential, with log2(e) folded into the
/// score scale by the caller): `a = k + r` with integer k and |r| <= 1/2 (exact), 2^r by
/// a degree-6 polynomial (relative error 5e-9, about 1 ulp after rounding); cheaper
/// than an `e^a`, whose reduction by ln 2 needs two constants. Returns exactly 0 below
/// -126 and propagates NaN; not meant for `a > 0`.
#[inline(always)]
pub(crate) fn exp2_f32(a: f32) -> f32 {
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let clamped = if a < -126.0 { -126.0 } else { a }; // NaN stays NaN
    let shifted = clamped + ROUND;
    let k = shifted - ROUND;
    let k_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = clamped - k;
    let p = (((((1.545_316_3e-4 * r + 1.339_086_3e-3) * r + 9.618_083e-3) * r + 5.550_357e-2) * r
        + 2.402_265e-1)
        * r
        + 6.931_472e-1)
        * r
        + 1.0;
    let two_k = f32::from_bits((k_int.wrapping_add(127) << 23) as u32);
    if a < -126.0 {
        0.0
    } else {
        p * two_k
    }
}

/// `e^(hi + lo)` for `hi <= 0` given as an unevaluated sum with `|lo| <= 0.05`: the
/// reduction `k = round(hi / ln 2)` uses `hi` alone and `lo` joins the reduced argument,
/// so `hi` may be a large exactly-known value and `lo` its small correction. Cody-Waite
/// reduction and Cephes' `expf` polynomial (about 1 ulp); returns 0 when `hi < -87`.
#[inline(always)]
fn exp_f32_split(hi: f32, lo: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = hi.clamp(-87.0, 88.0);
    let shifted = clamped.mul_add(LOG2E, ROUND);
    let k = shifted - ROUND;
    let k_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // |r| <= ln2/2 + 0.05: the degree-7 polynomial stays well below 1 ulp there.
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, clamped)) + lo;
    let p = horner(r, &EXP_POLY);
    let p = (p * r).mul_add(r, r) + 1.0;
    let two_k = f32::from_bits((k_int.wrapping_add(127) << 23) as u32);
    if hi < -87.0 {
        0.0
    } else {
        p * two_k
    }
}

/// `(e^(-x²/2), Φ(-|x|))` in f32, where Φ is the standard normal distribution function,
/// with relative errors below 1.5e-7 and 5e-7 wherever they are normal f32 numbers (also
/// deep in the tail, where Φ(-|x|) is tiny); both are flushed to 0 once e^(-x²/2) < e^-87
/// (|x| > 13.19, where Φ(-|x|) < 1e-39).
///
/// Φ(-u) = e^(-u²/2) R(u) with R(u) = Φ(-u) e^(u²/2) (the Mills ratio over √(2π)),
/// approximated by a rational function P₄(u) / Q₅(u) fitted on [0, 14] (relative error
/// 6e-9), evaluated in f32 with fused multiply-adds: the roundings of its nine Horner
/// steps add up to 3.7e-7 (every 64th f32 in the range, the accuracy test), far below
/// what a float32 product's rounding changes in GELU's input; in f64 (2e-7 in all) the
/// conversions and the f64 division made GELU 7% of a 1 x 128 forward pass. (Fused, the
/// Horner steps and the exponential's took the training forward's GELU and derivative
/// from 28-30 to 17-18 ms per 8 x 512 step, `bench --profile`, against separate
/// multiplies and adds.) x² is split into an exact head and a small
/// tail so that e^(-x²/2) does not inherit the rounding of x² (which would cost ~x² ulp
/// relative at |x| ≈ 12).
#[inline(always)]
pub(crate) fn gauss_and_lower_tail(x: f32) -> (f32, f32) {
    // Both results underflow before 14; the clamp keeps inf finite (NaN maps to 14,
    // the callers multiply by x and so still propagate it).
    let u = x.abs();
    let u = if u < 14.0 { u } else { 14.0 };
    // u = head + tail with the head's 12 leading mantissa bits: head² is exact in f32,
    // and u² - head² = tail · (u + head) with a tiny relative error.
    let head = f32::from_bits(u.to_bits() & 0xFFFF_F000);
    let tail = u - head;
    let gauss = exp_f32_split(-0.5 * (head * head), -0.5 * (tail * (u + head)));
    let p = horner(u, &MILLS_NUM);
    let q = horner(u, &MILLS_DEN);
    (gauss, gauss * (p / q))
}

/// Cephes' `expf` polynomial for [`exp_f32_split`], highest degree first: e^r = 1 + r +
/// r² p(r).
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// The Mills-ratio rational function's numerator and denominator, highest degree first.
const MILLS_NUM: [f32; 5] = [
    4.107_285e-3,
    4.056_776_5e-2,
    1.830_33e-1,
    4.380_087e-1,
    5.0e-1,
];
const MILLS_DEN: [f32; 6] = [
    1.029_531_2e-2,
    1.016_949_1e-1,
    4.689_389_3e-1,
    1.201_642_1,
    1.673_902_4,
    1.0,
];

/// `c[0] x^(n-1) + ... + c[n-1]` by Horner's rule with fused multiply-adds (exactly
/// rounded on every path, so the AVX-512, AVX2 and baseline builds still agree bit for
/// bit; the baseline build calls the C library's `fmaf`).
#[inline(always)]
fn horner(x: f32, c: &[f32]) -> f32 {
    c[1..].iter().fold(c[0], |p, &coef| p.mul_add(x, coef))
}

/// GELU, `x Φ(x)`, on 16 lanes: the operations of [`gauss_and_lower_tail`] and
/// `activations::gelu` in the same order (the same multiplies, adds, fused multiply-adds
/// and division), so every lane equals the scalar function bit for bit. For products that apply it to
/// a register tile before storing it (the GEMM's fused epilogue).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn gelu_ps(x: __m512) -> __m512 {
        let c = |v: f32| _mm512_set1_ps(v);
        let (mul, add, sub, fma) = (_mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps, _mm512_fmadd_ps);
        let horner = |x: __m512, coefs: &[f32]| {
            coefs[1..]
                .iter()
                .fold(c(coefs[0]), |p, &coef| fma(p, x, c(coef)))
        };
        // u = min(|x|, 14); MINPS returns its second operand for a NaN first one, as
        // the scalar `if u < 14.0 { u } else { 14.0 }`.
        let u = _mm512_min_ps(_mm512_abs_ps(x), c(14.0));
        let head = _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(u),
            _mm512_set1_epi32(0xFFFF_F000u32 as i32),
        ));
        let tail = sub(u, head);
        let hi = mul(c(-0.5), mul(head, head));
        let lo = mul(c(-0.5), mul(tail, add(u, head)));
        // exp_f32_split(hi, lo)
        const ROUND: f32 = 12_582_912.0;
        let clamped = _mm512_min_ps(_mm512_max_ps(hi, c(-87.0)), c(88.0));
        let shifted = fma(clamped, c(std::f32::consts::LOG2_E), c(ROUND));
        let k = sub(shifted, c(ROUND));
        let k_int = _mm512_sub_epi32(
            _mm512_castps_si512(shifted),
            _mm512_set1_epi32(ROUND.to_bits() as i32),
        );
        let r = add(
            _mm512_fnmadd_ps(
                k,
                c(-2.121_944_4e-4),
                _mm512_fnmadd_ps(k, c(0.693_359_4), clamped),
            ),
            lo,
        );
        let p = horner(r, &super::EXP_POLY);
        let p = add(fma(mul(p, r), r, r), c(1.0));
        let two_k = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            k_int,
            _mm512_set1_epi32(127),
        )));
        let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(hi, c(-87.0));
        let gauss = _mm512_maskz_mov_ps(!underflow, mul(p, two_k));
        // The Mills-ratio rational function.
        let num = horner(u, &super::MILLS_NUM);
        let den = horner(u, &super::MILLS_DEN);
        let lower_tail = mul(gauss, _mm512_div_ps(num, den));
        // Φ(x) = 1 - Φ(-x) for x > 0.
        let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, c(0.0));
        let cdf = _mm512_mask_sub_ps(lower_tail, positive, c(1.0), lower_tail);
        mul(x, cdf)
    }
}

/// GELU on 8 lanes: [`avx512::gelu_ps`] with 256-bit vectors (blends for its masks), for
/// the AVX2 kernel's fused epilogue; every lane equals the scalar function bit for bit.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn gelu_ps(x: __m256) -> __m256 {
        let c = |v: f32| _mm256_set1_ps(v);
        let (mul, add, sub, fma) = (_mm256_mul_ps, _mm256_add_ps, _mm256_sub_ps, _mm256_fmadd_ps);
        let horner = |x: __m256, coefs: &[f32]| {
            coefs[1..]
                .iter()
                .fold(c(coefs[0]), |p, &coef| fma(p, x, c(coef)))
        };
        // u = min(|x|, 14); MINPS returns its second operand for a NaN first one.
        let abs = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF)));
        let u = _mm256_min_ps(abs, c(14.0));
        let head = _mm256_and_ps(
            u,
            _mm256_castsi256_ps(_mm256_set1_epi32(0xFFFF_F000u32 as i32)),
        );
        let tail = sub(u, head);
        let hi = mul(c(-0.5), mul(head, head));
        let lo = mul(c(-0.5), mul(tail, add(u, head)));
        // exp_f32_split(hi, lo)
        const ROUND: f32 = 12_582_912.0;
        let clamped = _mm256_min_ps(_mm256_max_ps(hi, c(-87.0)), c(88.0));
        let shifted = fma(clamped, c(std::f32::consts::LOG2_E), c(ROUND));
        let k = sub(shifted, c(ROUND));
        let k_int = _mm256_sub_epi32(
            _mm256_castps_si256(shifted),
            _mm256_set1_epi32(ROUND.to_bits() as i32),
        );
        let r = add(
            _mm256_fnmadd_ps(
                k,
                c(-2.121_944_4e-4),
                _mm256_fnmadd_ps(k, c(0.693_359_4), clamped),
            ),
            lo,
        );
        let p = horner(r, &super::EXP_POLY);
        let p = add(fma(mul(p, r), r, r), c(1.0));
        let two_k = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k_int,
            _mm256_set1_epi32(127),
        )));
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(hi, c(-87.0));
        let gauss = _mm256_andnot_ps(underflow, mul(p, two_k));
        // The Mills-ratio rational function.
        let num = horner(u, &super::MILLS_NUM);
        let den = horner(u, &super::MILLS_DEN);
        let lower_tail = mul(gauss, _mm256_div_ps(num, den));
        // Φ(x) = 1 - Φ(-x) for x > 0.
        let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(x, c(0.0));
        let cdf = _mm256_blendv_ps(lower_tail, sub(c(1.0), lower_tail), positive);
        mul(x, cdf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Φ(-|x|) and e^(-x²/2) in f64 through libm.
    fn want(x: f64) -> (f64, f64) {
        (
            (-0.5 * x * x).exp(),
            0.5 * libm::erfc(x.abs() / std::f64::consts::SQRT_2),
        )
    }

    #[test]
    fn exp2_is_accurate_on_its_domain() {
        // Every 16th f32 in [-126, 0], relative error against f64.
        let mut worst = 0.0f64;
        let mut bits = 0x8000_0000u32; // -0.0
        let end = (-126.0f32).to_bits();
        while bits <= end {
            let a = f32::from_bits(bits);
            let want = (a as f64).exp2();
            worst = worst.max(((exp2_f32(a) as f64 - want) / want).abs());
            bits += 16;
        }
        assert!(worst < 1.5e-7, "exp2: worst relative error {worst:e}");
        assert_eq!(exp2_f32(0.0), 1.0);
        assert_eq!(exp2_f32(-1.0), 0.5);
        assert_eq!(exp2_f32(-126.5), 0.0);
        assert_eq!(exp2_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp2_f32(f32::NAN).is_nan());
    }

    #[test]
    fn gauss_and_tail_are_accurate_in_relative_terms() {
        // Every 64th f32 in [4.7e-10, 13.5) (about 2^24 values); the sign of x must not
        // matter (checked on a subset).
        let (mut worst_g, mut worst_t) = (0.0f64, 0.0f64);
        let end = 13.5f32.to_bits();
        let mut bits = 0x3000_0000u32; // 4.7e-10: below this both are 1 and 0.5
        while bits < end {
            let x = f32::from_bits(bits);
            let (g, t) = gauss_and_lower_tail(x);
            let (wg, wt) = want(x as f64);
            // e^(-x²/2) is flushed to zero below about e^-87 (|x| > 13.19).
            if wg >= (-86.99f64).exp() {
                worst_g = worst_g.max(((g as f64 - wg) / wg).abs());
            } else {
                assert!(g >= 0.0 && (g as f64) <= wg + 1.5e-45, "gauss({x}) = {g:e}");
            }
            if wt >= f32::MIN_POSITIVE as f64 && wg >= (-86.99f64).exp() {
                worst_t = worst_t.max(((t as f64 - wt) / wt).abs());
            } else {
                // Subnormal: rounded or flushed to zero, never above the true value by
                // more than the relative error plus the subnormal spacing.
                assert!(
                    t >= 0.0 && (t as f64) <= wt * (1.0 + 6e-7) + 1.5e-45,
                    "tail({x}) = {t:e} vs {wt:e}"
                );
            }
            if bits.is_multiple_of(4096) {
                assert_eq!(gauss_and_lower_tail(-x), (g, t));
            }
            bits += 64;
        }
        println!("worst relative error: gauss {worst_g:e}, tail {worst_t:e}");
        assert!(worst_g < 1.5e-7, "gauss: worst relative error {worst_g:e}");
        assert!(worst_t < 5e-7, "tail: worst relative error {worst_t:e}");
        // Exact points, the far range and non-finite inputs.
        assert_eq!(gauss_and_lower_tail(0.0), (1.0, 0.5));
        assert_eq!(gauss_and_lower_tail(20.0), (0.0, 0.0));
        assert_eq!(gauss_and_lower_tail(f32::INFINITY), (0.0, 0.0));
        assert_eq!(gauss_and_lower_tail(f32::NEG_INFINITY), (0.0, 0.0));
    }

    /// Every 256th f32 of both signs (finite, infinite and NaN included), through `vector`
    /// (`lanes` at a time), against the scalar GELU bit for bit.
    #[cfg(target_arch = "x86_64")]
    fn check_gelu_lanes(lanes: usize, vector: impl Fn(&[f32], &mut [f32])) {
        let gelu = crate::kernels::activations::gelu;
        let mut xs: Vec<f32> = (0..=u32::MAX / 256)
            .map(|i| f32::from_bits(i * 256 + 17))
            .collect();
        xs.extend([
            0.0,
            -0.0,
            14.0,
            -14.0,
            13.19,
            -13.19,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        let mut out = vec![0.0f32; lanes];
        for chunk in xs.chunks(lanes) {
            let mut input = vec![1.0f32; lanes];
            input[..chunk.len()].copy_from_slice(chunk);
            vector(&input, &mut out);
            for (&x, &y) in chunk.iter().zip(&out) {
                let want = gelu(x);
                assert!(
                    y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                    "gelu({x:e}) on {lanes} lanes: {y:e} vs scalar {want:e}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_gelu_equals_the_scalar_one_bit_for_bit() {
        use std::arch::x86_64::*;
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        check_gelu_lanes(16, |x, y| {
            // SAFETY: AVX-512F was detected above; both slices hold 16 floats.
            unsafe {
                _mm512_storeu_ps(y.as_mut_ptr(), avx512::gelu_ps(_mm512_loadu_ps(x.as_ptr())))
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_gelu_equals_the_scalar_one_bit_for_bit() {
        use std::arch::x86_64::*;
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        check_gelu_lanes(8, |x, y| {
            // SAFETY: AVX2 and FMA were detected above; both slices hold 8 floats.
            unsafe { _mm256_storeu_ps(y.as_mut_ptr(), avx2::gelu_ps(_mm256_loadu_ps(x.as_ptr()))) }
        });
    }
}
