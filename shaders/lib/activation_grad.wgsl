// The derivative of lib/activation.wgsl's `activate` (same override ACT: 0 identity,
// 1 relu, 2 tanh, 3 sigmoid, 4 gelu), at the pre-activation z whose activation is a:
// relu'(0) = 0; tanh' = 1 - a², sigmoid' = a(1 - a) from the kept activation; gelu'
// = Φ(z) + z·φ(z) with Φ through the same erf_approx as the forward pass.
fn activate_grad(z: f32, a: f32) -> f32 {
    switch ACT {
        case 1u: {
            return select(0.0, 1.0, z > 0.0);
        }
        case 2u: {
            return 1.0 - a * a;
        }
        case 3u: {
            return a * (1.0 - a);
        }
        case 4u: {
            let cdf = 0.5 * (1.0 + erf_approx(z * 0.70710678118654752));
            // 1/sqrt(2π)
            return cdf + z * 0.39894228040143268 * exp(-0.5 * z * z);
        }
        default: {
            return 1.0;
        }
    }
}
