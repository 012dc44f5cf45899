//! Branch-free `exp` and `erf` approximations that the compiler can vectorise, and a
//! runtime switch that runs hot loops compiled for AVX2 when the CPU has it.
//!
//! Everything here uses plain `*` and `+` (never `mul_add`), so the AVX2 and baseline
//! builds of a loop produce bit-identical results: the choice of path only changes speed.

/// Defines a function whose body is compiled twice: once with AVX2 and FMA enabled
/// (8 f32 lanes) and once for the baseline target; the AVX2 copy runs when the CPU has
/// those features. The body is duplicated textually (rather than passed as a closure)
/// so that the compiler vectorises it inside the AVX2 copy instead of outlining it.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $body
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features `avx2` was compiled for were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            fn baseline($($arg: $ty),*) $body
            baseline($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// `e^a` in f32 for the softmax, where `a <= 0`: Cephes' `expf` (Cody-Waite reduction
/// and a degree-7 polynomial, about 1 ulp). Returns exactly 0 below -87 (where the true
/// value is under 2^-125) and propagates NaN.
#[inline(always)]
pub(crate) fn exp_f32(a: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4; // few mantissa bits, so k * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = a.clamp(-87.0, 88.0); // NaN stays NaN
    let shifted = clamped * LOG2E + ROUND;
    let k = shifted - ROUND;
    // The integer k sits in the low mantissa bits of `shifted`.
    let k_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = clamped - k * LN2_HI - k * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5; // Cephes' 5.0000001201e-1 rounds to 0.5 in f32
    let p = p * r * r + r + 1.0;
    let two_k = f32::from_bits((k_int.wrapping_add(127) << 23) as u32);
    if a < -87.0 {
        0.0
    } else {
        p * two_k
    }
}

/// `e^a` in f64 for `a <= 0` (used inside the GELU): Cody-Waite reduction to
/// |r| <= ln2/2 and a degree-10 Taylor polynomial (relative error < 1e-12). Returns 0
/// below -700.
#[inline(always)]
pub(crate) fn exp_f64(a: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let clamped = if a < -700.0 { -700.0 } else { a };
    let shifted = clamped * LOG2E + ROUND;
    let k = shifted - ROUND;
    let k_int = (shifted.to_bits() as i64).wrapping_sub(ROUND.to_bits() as i64);
    let r = clamped - k * LN2_HI - k * LN2_LO;
    let mut p = 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let two_k = f64::from_bits((k_int.wrapping_add(1023) << 52) as u64);
    if a < -700.0 {
        0.0
    } else {
        p * two_k
    }
}

/// `1 + erf(z)` with small *relative* error everywhere, including the far negative tail
/// where it equals erfc(|z|) and is tiny: one Chebyshev fit of erfc on [0, inf) from
/// Numerical Recipes (`erfcc`, fractional error < 1.2e-7), then `1 + erf(z)` is
/// `2 - erfc(z)` for z > 0 and `erfc(-z)` otherwise. Branch-free, so it vectorises.
#[inline(always)]
pub(crate) fn one_plus_erf(z: f64) -> f64 {
    let u = if z < 0.0 { -z } else { z };
    let t = 1.0 / (1.0 + 0.5 * u);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc_u = t * exp_f64(-u * u + poly);
    if z > 0.0 {
        2.0 - erfc_u
    } else {
        erfc_u
    }
}
