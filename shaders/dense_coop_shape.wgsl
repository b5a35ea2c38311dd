// The override constants and cooperative matrix types of dense_coop.wgsl. They come
// first in the composed module, before the shared pieces, as in the kernel measured on
// the H100: naga writes SPIR-V in the order of declaration, and in this order the
// kernel compiles to the same SPIR-V as it did when it was measured.
//
// Written for 16 x 16 x 16 matrices; the crate derives the 8 x 8 x 8 variant by
// replacing `coop_mat16x16` with `coop_mat8x8` and the value of CT with 8 (the lines
// after the two `[coop size]` markers below).

// Activation (lib/activation.wgsl): 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu.
override ACT: u32 = 0u;
// Threads per workgroup.
override WG: u32 = 128u;
// Blocks per workgroup along the outputs (BX) and the rows (BY).
override BX: u32 = 2u;
override BY: u32 = 2u;
// Matrices per block along the rows (TMC) and the outputs (TNC), at most 4 each.
override TMC: u32 = 2u;
override TNC: u32 = 2u;
// Depth of each staged slice of the inner dimension, a multiple of CT.
override BK: u32 = 32u;
// 1: where the input width is a multiple of 4, each slice of x and w is loaded into
// registers while the one before it is multiplied (the loads' latency hides behind
// the matrix products; at most 4 vectors of x and of w per thread and slice); 0:
// loaded after the barrier that ends the previous slice.
override PREFETCH: u32 = 0u;

// The cooperative matrix side. [coop size]
const CT: u32 = 16u;
// [coop size]
alias MatA = coop_mat16x16<f16, A>;
alias MatB = coop_mat16x16<f16, B>;
alias MatC = coop_mat16x16<f32, C>;

