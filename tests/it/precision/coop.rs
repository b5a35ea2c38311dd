//! `Precision::F16CoopMatrix` against the f16 reference, on edge shapes, and on the
//! CPU.

use super::*;

fn coop_on_adapter(info: &AdapterInfo) {
    common::require_coop("f16_coop_matrix_matches_the_f16_reference");
    let place = Placement::Adapter(info.index);
    let result = session(
        &place,
        SessionOptions::default().precision(Precision::F16CoopMatrix),
    );
    if quirks::coop_matrix(info) {
        // Batches over 16 rows run on the cooperative-matrix kernel.
        check(&result.unwrap(), F16, &format!("{info} f16-coop"));
        // SAFETY: this test is what vouches for the kernels' own bounds checks.
        let trusted = unsafe {
            SessionOptions::default()
                .precision(Precision::F16CoopMatrix)
                .trusted_kernels()
        };
        check(
            &session(&place, trusted).unwrap(),
            F16,
            &format!("{info} f16-coop trusted"),
        );
        for shape in CoopShape::CANDIDATES {
            let options = SessionOptions::default()
                .precision(Precision::F16CoopMatrix)
                .coop_shape(shape);
            match session(&place, options.clone()) {
                Ok(s) => check(&s, F16, &format!("{info} f16-coop {shape:?}")),
                Err(Error::TileUnsupported { .. }) => {
                    eprintln!("{info}: {shape:?} exceeds its limits, not checked");
                    continue;
                }
                Err(e) => panic!("{info} {shape:?}: {e}"),
            }
            // SAFETY: this test is what vouches for the kernels' own bounds checks.
            let trusted = unsafe { options.trusted_kernels() };
            check(
                &session(&place, trusted).unwrap(),
                F16,
                &format!("{info} f16-coop {shape:?} trusted"),
            );
        }
    } else {
        match result {
            Err(Error::PrecisionUnsupported { precision, .. }) => {
                assert_eq!(precision, "f16-coop");
                eprintln!("{info}: no cooperative matrices, F16CoopMatrix refused as it should");
            }
            Err(e) => panic!("{info}: expected PrecisionUnsupported, got {e}"),
            Ok(_) => panic!("{info}: F16CoopMatrix accepted without cooperative matrices"),
        }
    }
}

placement_tests!(adapters coop_on_adapter;
    f16_coop_matrix_matches_the_f16_reference_vulkan: Vulkan,
    f16_coop_matrix_matches_the_f16_reference_gl: Gl,
);

fn coop_edge_shapes(info: &AdapterInfo) {
    common::require_coop("f16_coop_matrix_handles_edge_shapes");
    // Widths below, at and past one matrix side (8 or 16) and one staged slice, rows
    // past one workgroup tile, every activation; inputs that are and are not a
    // multiple of 4 (the kernel reads four at a time where rows start on a vector).
    // The default shape, and blocks of 1 × 3 and 3 × 1 matrices with odd slice
    // depths (no candidate has them: the kernel's guarded accumulators for 1 and 3),
    // and one that loads slices ahead with a partial last vector per thread (x: 3
    // matrices × 1 block of rows, slices one matrix deep: 1.5 vectors per thread with
    // 8 × 8 matrices and subgroups of 8, as with 16 × 16 and 32).
    let shapes = [
        CoopShape::DEFAULT,
        CoopShape {
            bx: 1,
            by: 2,
            tmc: 1,
            tnc: 3,
            bk: 1,
            prefetch: false,
        },
        CoopShape {
            bx: 2,
            by: 1,
            tmc: 3,
            tnc: 1,
            bk: 3,
            prefetch: false,
        },
        CoopShape {
            bx: 4,
            by: 1,
            tmc: 3,
            tnc: 1,
            bk: 1,
            prefetch: true,
        },
    ];
    let models = [
        Model::random(&[1, 1], &[Identity], 11).unwrap(),
        Model::random(&[7, 13, 1], &[Relu, Sigmoid], 12).unwrap(),
        Model::random(&[65, 33, 16, 40], &[Tanh, Gelu, Softmax], 13).unwrap(),
        Model::random(&[64, 4, 132, 12], &[Relu, Identity, Tanh], 14).unwrap(),
    ];
    if !quirks::coop_matrix(info) {
        return;
    }
    for (model, shape) in models
        .iter()
        .flat_map(|m| shapes.iter().map(move |s| (m, *s)))
    {
        let width = model.in_features();
        let graph = Graph::builder(width)
            .member("m", model.clone(), Placement::Adapter(info.index))
            .build()
            .unwrap();
        let options = SessionOptions::default()
            .precision(Precision::F16CoopMatrix)
            .coop_shape(shape);
        let s = Session::with_options(graph, options).unwrap();
        for batch in [17, 33, 257] {
            let x = input(batch, width, batch as u64 + 7);
            let run = s
                .run(&x, &RunOptions::default().member_outputs(true))
                .unwrap();
            assert_close_tol(
                &format!("{info} f16-coop {shape:?} {width}-wide batch {batch}"),
                run.members[0].output.as_ref().unwrap().as_slice(),
                &reference_forward_f16(model, &x),
                F16.1,
                F16.2,
            );
        }
    }
}

placement_tests!(adapters coop_edge_shapes;
    f16_coop_matrix_handles_edge_shapes_vulkan: Vulkan,
    f16_coop_matrix_handles_edge_shapes_gl: Gl,
);

#[test]
fn f16_coop_matrix_on_the_cpu_rounds_like_f16() {
    let s = session(
        &Placement::Cpu,
        SessionOptions::default().precision(Precision::F16CoopMatrix),
    )
    .unwrap();
    check(&s, F16, "cpu f16-coop");
}
