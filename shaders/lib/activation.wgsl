// The element-wise activation of the dense kernels, applied to x·wᵀ + b in f32: the
// kernel's override ACT, 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu (exact, erf form).

// erf by Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7.
fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn activate(v: f32) -> f32 {
    switch ACT {
        case 1u: {
            return max(v, 0.0);
        }
        case 2u: {
            // tanh saturates to +-1 in f32 beyond |v| = 10; clamping keeps
            // exp-based implementations from overflowing to NaN.
            return tanh(clamp(v, -10.0, 10.0));
        }
        case 3u: {
            // Split by sign so exp never overflows.
            if v >= 0.0 {
                return 1.0 / (1.0 + exp(-v));
            }
            let e = exp(v);
            return e / (1.0 + e);
        }
        case 4u: {
            return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
        }
        default: {
            return v;
        }
    }
}
