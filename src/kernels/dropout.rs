//! Inverted dropout whose mask is a pure function of (seed, element index), so backward
//! recomputes it instead of storing it.

/// Zeroes each element with probability `p` and scales the rest by `1/(1-p)`, in place.
/// Element `i` of the buffer uses mask index `offset + i`.
pub fn dropout_forward(x: &mut [f32], p: f32, seed: u64, offset: u64) {
    let _ = (x, p, seed, offset);
    todo!("kernels helper")
}

/// Applies the same mask (and scale) to a gradient, in place.
pub fn dropout_backward(dx: &mut [f32], p: f32, seed: u64, offset: u64) {
    dropout_forward(dx, p, seed, offset)
}
