//! Stack planning: members of one shape (the same layer widths and activations),
//! wherever they stand in the graph, run as a *stack* — their weights, biases and
//! activations each live in one buffer, member after member, and every layer is one
//! dispatch for the whole stack (member z on `workgroup_id.z`), as is the aggregate.
//! An ensemble of four identical MLPs of three layers is four dispatches per run
//! instead of sixteen; on a GPU every dispatch is followed by a barrier, so at small
//! batches their count is the latency.

use super::kernels::MAX_STACK;
use crate::model::Model;

pub(crate) fn bytes_of(values: usize) -> u64 {
    (values * std::mem::size_of::<f32>()) as u64
}

/// Values from one member's part of a stacked buffer to the next: `values` rounded up
/// to whole vectors of four (the kernels read x and w four at a time).
pub(crate) fn stride(values: usize) -> usize {
    values.next_multiple_of(4)
}

/// The same layer widths and activations.
fn same_shape(a: &Model, b: &Model) -> bool {
    a.layers().len() == b.layers().len()
        && a.layers().iter().zip(b.layers()).all(|(x, y)| {
            (x.in_features(), x.out_features(), x.activation())
                == (y.in_features(), y.out_features(), y.activation())
        })
}

/// The most rows whose activations, `outputs` values a row for each of `members`
/// members (each member's part rounded up by [`stride`]), fit in `max_bytes`: the rule
/// [`plan_stacks`] admits a member by.
pub(crate) fn stack_rows(max_bytes: u64, members: usize, outputs: usize) -> usize {
    // stride(r * outputs) <= v, v a multiple of 4, exactly when r * outputs <= v.
    let per_member = (max_bytes / 4 / members as u64) & !3;
    usize::try_from(per_member / outputs as u64).unwrap_or(usize::MAX)
}

/// Groups `models` into stacks of one shape, each at most `MAX_STACK` long and as long
/// as its stacked buffers stay within `max_bytes`: weights (`weight_bytes` per value),
/// the activations of `rows` rows, and `blend_bytes` per member of a stacking
/// blender's first-layer columns (0 without a blender). A model joins the latest stack of its shape
/// (wherever its members stand in the graph) while that one has room, else starts a
/// new one; stacks are ordered by their first member, members within a stack by
/// index. A model alone is always a stack (its own limits are checked elsewhere).
pub(crate) fn plan_stacks(
    models: &[&Model],
    weight_bytes: u64,
    max_bytes: u64,
    rows: usize,
    blend_bytes: u64,
) -> Vec<Vec<usize>> {
    let fits = |model: &Model, n: u64| {
        n.saturating_mul(blend_bytes) <= max_bytes
            && model.layers().iter().all(|l| {
                let (out_f, in_f) = (l.out_features(), l.in_features());
                n * stride(out_f * in_f) as u64 * weight_bytes <= max_bytes
                    && n * bytes_of(stride(out_f)) <= max_bytes
                    && stack_rows(max_bytes, n as usize, out_f) >= rows
            })
    };
    let mut stacks: Vec<Vec<usize>> = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let latest = stacks
            .iter_mut()
            .rev()
            .find(|s| same_shape(models[s[0]], model));
        match latest {
            Some(s) if s.len() < MAX_STACK && fits(model, s.len() as u64 + 1) => s.push(i),
            _ => stacks.push(vec![i]),
        }
    }
    stacks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Activation;

    /// `stack_rows` is the most rows whose stacked activations fit, exactly.
    #[test]
    fn stack_rows_is_exact() {
        for max_bytes in [16u64, 100, 1000, 4096, 10256, 1 << 22, 1 << 31] {
            for members in 1..=9 {
                for outputs in [1, 3, 4, 7, 16, 65, 256] {
                    let r = stack_rows(max_bytes, members, outputs);
                    let bytes = |rows: usize| members as u64 * bytes_of(stride(rows * outputs));
                    assert!(
                        bytes(r) <= max_bytes,
                        "{max_bytes} {members} {outputs}: {r}"
                    );
                    assert!(
                        bytes(r + 1) > max_bytes,
                        "{max_bytes} {members} {outputs}: {r} + 1 fits"
                    );
                }
            }
        }
    }

    /// Stacks hold members of one shape (widths and activations) wherever they stand
    /// in the graph, at most `MAX_STACK`, as long as their weights, biases and the
    /// activations of the given rows fit in one buffer each; a member joins the latest
    /// stack of its shape.
    #[test]
    fn stacks_hold_members_of_one_shape_within_the_limits() {
        let model = |widths: &[usize], act| {
            let acts = vec![act; widths.len() - 1];
            Model::random(widths, &acts, 1).unwrap()
        };
        let a = model(&[10, 10, 3], Activation::Relu);
        let b = model(&[10, 10, 3], Activation::Tanh);
        let c = model(&[10, 12, 3], Activation::Relu);
        let plan = |models: &[&Model], max_bytes, rows| plan_stacks(models, 4, max_bytes, rows, 0);
        let ranges = |rs: &[std::ops::Range<usize>]| -> Vec<Vec<usize>> {
            rs.iter().map(|r| r.clone().collect()).collect()
        };
        let big = u64::MAX / 1024;
        assert_eq!(
            plan(&[&a, &a, &b, &a, &a, &a], big, 1),
            [vec![0, 1, 3, 4, 5], vec![2]]
        );
        assert_eq!(plan(&[&a, &c, &c, &a], big, 1), [vec![0, 3], vec![1, 2]]);
        // A blender's columns per member count too: two of 4 KiB fit in 8 KiB.
        assert_eq!(
            plan_stacks(&[&a, &a, &a, &a, &a], 4, 8192, 1, 4096),
            [vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(
            plan(&[&a, &b, &c, &a, &b, &c], big, 1),
            [vec![0, 3], vec![1, 4], vec![2, 5]]
        );
        assert_eq!(plan(&vec![&a; 40], big, 1), ranges(&[0..32, 32..40]));
        // Weights of 10 × 10 values: 400 bytes a member.
        assert_eq!(plan(&[&a; 5], 800, 1), ranges(&[0..2, 2..4, 4..5]));
        assert_eq!(
            plan(&[&a; 5], 799, 1),
            ranges(&[0..1, 1..2, 2..3, 3..4, 4..5])
        );
        // A full stack takes no more members; the next one of its shape does.
        assert_eq!(
            plan(&[&a, &a, &a, &b, &a], 800, 1),
            [vec![0, 1], vec![2, 4], vec![3]]
        );
        // Activations of 100 rows of 10 values (the widest layer): 4000 bytes a member.
        assert_eq!(plan(&[&a; 3], 8000, 100), ranges(&[0..2, 2..3]));
        // f16 weights take half the room.
        assert_eq!(plan_stacks(&[&a; 5], 2, 800, 1, 0), ranges(&[0..4, 4..5]));
        // A member too large for one buffer is still a stack of one (its own limits
        // are reported before stacks are planned).
        assert_eq!(plan(&[&a, &a], 100, 1), ranges(&[0..1, 1..2]));
    }
}
