//! Every kind of bad input gives a typed error that says what was expected and what
//! was given, never a panic, and leaves what was already built working.

use crate::common;

use common::{assert_close, input, reference_forward};
use wgpu_ensemble::{
    adapters, Activation::*, Aggregate, Error, Graph, Model, Placement, Precision, RunOptions,
    Session, SessionOptions, Tensor,
};

fn model(widths: &[usize]) -> Model {
    let acts = vec![Relu; widths.len() - 1];
    Model::random(widths, &acts, 1).unwrap()
}

fn cpu_session() -> (Session, Model) {
    let m = model(&[4, 6, 3]);
    let g = Graph::builder(4)
        .member("m", m.clone(), Placement::Cpu)
        .build()
        .unwrap();
    (Session::new(g).unwrap(), m)
}

#[test]
fn wrong_feature_width() {
    let (session, m) = cpu_session();
    let err = session
        .run(&input(2, 5, 1), &RunOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::FeatureWidth {
                expected: 4,
                got: 5
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("5") && err.to_string().contains("4"),
        "{err}"
    );
    // The session still works after the bad input.
    let x = input(3, 4, 2);
    let run = session.run(&x, &RunOptions::default()).unwrap();
    assert_close(
        "after bad input",
        run.aggregate.as_slice(),
        &reference_forward(&m, &x),
    );
}

#[test]
fn empty_batch() {
    let (session, _) = cpu_session();
    let x = Tensor::matrix(0, 4, vec![]).unwrap();
    let err = session.run(&x, &RunOptions::default()).unwrap_err();
    assert!(matches!(err, Error::EmptyBatch), "{err:?}");
}

#[test]
fn input_of_the_wrong_rank() {
    let (session, _) = cpu_session();
    let x = Tensor::new(vec![8], vec![0.0; 8]).unwrap();
    let err = session.run(&x, &RunOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Rank { expected: 2, shape, .. } if shape == &[8]),
        "{err:?}"
    );
}

#[test]
fn tensor_data_that_does_not_fill_its_shape() {
    let err = Tensor::matrix(3, 4, vec![0.0; 11]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TensorData {
                expected: 12,
                got: 11,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bias_that_does_not_match_the_weight() {
    let w = Tensor::matrix(3, 2, vec![0.0; 6]).unwrap();
    let err = Model::from_parts(vec![(w, vec![0.0; 4], Relu)]).unwrap_err();
    match err {
        Error::LayerShape {
            layer,
            expected,
            got,
            ..
        } => {
            assert_eq!((layer, expected, got), (0, vec![3], vec![4]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn layers_that_do_not_chain() {
    let w0 = Tensor::matrix(5, 2, vec![0.0; 10]).unwrap();
    let w1 = Tensor::matrix(3, 4, vec![0.0; 12]).unwrap();
    let err = Model::from_parts(vec![(w0, vec![0.0; 5], Relu), (w1, vec![0.0; 3], Identity)])
        .unwrap_err();
    match err {
        Error::LayerShape {
            layer,
            expected,
            got,
            ..
        } => {
            assert_eq!((layer, expected, got), (1, vec![3, 5], vec![3, 4]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn weight_that_is_not_a_matrix() {
    let w = Tensor::new(vec![6], vec![0.0; 6]).unwrap();
    let err = Model::from_parts(vec![(w, vec![0.0; 6], Relu)]).unwrap_err();
    assert!(
        matches!(&err, Error::LayerShape { layer: 0, got, .. } if got == &[6]),
        "{err:?}"
    );
}

#[test]
fn model_without_layers() {
    assert!(matches!(Model::new(vec![]), Err(Error::EmptyModel)));
    assert!(matches!(
        Model::random(&[3], &[], 0),
        Err(Error::EmptyModel)
    ));
}

#[test]
fn members_whose_output_widths_differ() {
    let err = Graph::builder(4)
        .member("three", model(&[4, 3]), Placement::Cpu)
        .member("five", model(&[4, 5]), Placement::Cpu)
        .build()
        .unwrap_err();
    match err {
        Error::MemberOutputWidth {
            member,
            first,
            expected,
            got,
        } => {
            assert_eq!(
                (member.as_str(), first.as_str(), expected, got),
                ("five", "three", 3, 5)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn member_whose_input_width_differs_from_the_graph() {
    let err = Graph::builder(4)
        .member("wide", model(&[6, 3]), Placement::Cpu)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::MemberInputWidth { member, expected: 4, got: 6 } if member == "wide"),
        "{err:?}"
    );
}

#[test]
fn graph_without_members_or_with_duplicates() {
    assert!(matches!(Graph::builder(4).build(), Err(Error::NoMembers)));
    assert!(matches!(
        Graph::builder(0)
            .member("m", model(&[4, 3]), Placement::Cpu)
            .build(),
        Err(Error::ZeroInputWidth)
    ));
    let err = Graph::builder(4)
        .member("m", model(&[4, 3]), Placement::Cpu)
        .member("m", model(&[4, 3]), Placement::Cpu)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateMember { name } if name == "m"),
        "{err:?}"
    );
    let err = Graph::builder(4)
        .member("", model(&[4, 3]), Placement::Cpu)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::EmptyMemberName), "{err:?}");
    // A name of a million characters (errors, reports and metrics quote names) is
    // refused, quoted in 200; a name of 200 is fine.
    let long = "n".repeat(1_000_000);
    let err = Graph::builder(4)
        .member(long.as_str(), model(&[4, 3]), Placement::Cpu)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidValue { what: "member name", value, .. } if value.len() <= 200),
        "{}",
        &format!("{err:?}")[..300]
    );
    assert!(
        err.to_string().len() < 400,
        "{} bytes",
        err.to_string().len()
    );
    Graph::builder(4)
        .member("n".repeat(200), model(&[4, 3]), Placement::Cpu)
        .build()
        .unwrap();
}

/// A NaN or infinity in a weight or bias is refused where the layer is made, with its
/// layer, tensor and position.
#[test]
fn non_finite_weights_and_biases() {
    let w = |at: usize, v: f32| {
        let mut values = vec![0.5; 6];
        values[at] = v;
        Tensor::matrix(2, 3, values).unwrap()
    };
    let first = (w(0, 0.1), vec![0.0; 2], Relu);
    for (at, value) in [(5, f32::NAN), (3, f32::INFINITY), (1, f32::NEG_INFINITY)] {
        let parts = vec![
            (
                Tensor::matrix(3, 4, vec![0.1; 12]).unwrap(),
                vec![0.0; 3],
                Relu,
            ),
            (w(at, value), vec![0.0; 2], Identity),
        ];
        let err = Model::from_parts(parts).unwrap_err();
        match &err {
            Error::NonFiniteWeight {
                layer: 1,
                tensor: "weight",
                index,
                value: got,
            } => {
                assert_eq!(index, &[at / 3, at % 3], "{err}");
                assert!(got.is_nan() == value.is_nan() && (value.is_nan() || *got == value));
            }
            other => panic!("{value} at {at}: {other:?}"),
        }
        assert!(err.to_string().contains("must be finite"), "{err}");
    }
    let err =
        wgpu_ensemble::Dense::new(first.0.clone(), vec![0.0, f32::INFINITY], Relu).unwrap_err();
    assert!(
        matches!(&err, Error::NonFiniteWeight { layer: 0, tensor: "bias", index, .. } if index == &[1]),
        "{err:?}"
    );
    assert!(wgpu_ensemble::Dense::new(first.0, first.1, first.2).is_ok());
}

/// With f16 precision a weight f16 cannot hold (it would become infinite) fails the
/// session build, naming the member, layer and position; one that rounds to f16's
/// largest value, or any with f32 precision, does not.
#[test]
fn weights_beyond_the_range_of_f16() {
    let session = |value: f32, precision: Precision| {
        let mut values = vec![0.25; 12];
        values[7] = value;
        let m = Model::from_parts(vec![(
            Tensor::matrix(3, 4, values).unwrap(),
            vec![0.0; 3],
            Identity,
        )])
        .unwrap();
        let g = Graph::builder(4)
            .member("small", model(&[4, 3]), Placement::Cpu)
            .member("big", m, Placement::Cpu)
            .build()
            .unwrap();
        Session::with_options(g, SessionOptions::default().precision(precision))
    };
    for value in [65520.0, -1e6] {
        match session(value, Precision::F16) {
            Err(Error::WeightOutOfRange {
                member,
                layer: 0,
                index,
                value: got,
                precision: "f16",
            }) => {
                assert_eq!((member.as_str(), index, got), ("big", vec![1, 3], value));
            }
            other => panic!("{value}: {:?}", other.map(|_| ())),
        }
    }
    // 65519 rounds to 65504, f16's largest finite value.
    assert!(session(65519.0, Precision::F16).is_ok());
    assert!(session(-1e6, Precision::F32).is_ok());
}

fn two_members(aggregate: Aggregate) -> Result<Graph, Error> {
    Graph::builder(4)
        .member("a", model(&[4, 3]), Placement::Cpu)
        .member("b", model(&[4, 3]), Placement::Cpu)
        .aggregate(aggregate)
        .build()
}

#[test]
fn aggregate_weights_whose_count_differs_from_the_members() {
    let err = two_members(Aggregate::WeightedMean(vec![1.0, 2.0, 3.0])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::AggregateWeightCount {
                expected: 2,
                got: 3
            }
        ),
        "{err:?}"
    );
    let err = two_members(Aggregate::Vote {
        weights: Some(vec![1.0]),
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::AggregateWeightCount {
                expected: 2,
                got: 1
            }
        ),
        "{err:?}"
    );
}

#[test]
fn negative_or_non_finite_aggregate_weights() {
    let err = two_members(Aggregate::WeightedMean(vec![1.0, -0.5])).unwrap_err();
    assert!(
        matches!(err, Error::AggregateWeight { index: 1, value } if value == -0.5),
        "{err:?}"
    );
    let err = two_members(Aggregate::Vote {
        weights: Some(vec![f32::NAN, 1.0]),
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::AggregateWeight { index: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn all_zero_aggregate_weights() {
    let err = two_members(Aggregate::WeightedMean(vec![0.0, 0.0])).unwrap_err();
    assert!(matches!(err, Error::AggregateWeightsAllZero), "{err:?}");
}

#[test]
fn adapter_index_out_of_range_lists_the_adapters() {
    let listed = adapters();
    let index = listed.len() + 3;
    for place in [
        Placement::Adapter(index),
        Placement::Queue {
            adapter: index,
            slot: 1,
        },
    ] {
        let g = Graph::builder(4)
            .member("m", model(&[4, 3]), place)
            .build()
            .unwrap();
        match Session::new(g) {
            Err(Error::AdapterOutOfRange {
                member,
                index: i,
                available,
            }) => {
                assert_eq!(member, "m");
                assert_eq!(i, index);
                assert_eq!(available.len(), listed.len());
                for (desc, info) in available.iter().zip(&listed) {
                    assert!(
                        desc.contains(&info.name),
                        "{desc} should name {}",
                        info.name
                    );
                }
                let message = Error::AdapterOutOfRange {
                    member,
                    index: i,
                    available,
                }
                .to_string();
                assert!(message.contains(&index.to_string()), "{message}");
                assert!(message.contains("'m'"), "{message}");
            }
            Err(other) => panic!("expected AdapterOutOfRange, got {other:?}"),
            Ok(_) => panic!("adapter {index} does not exist but the session was built"),
        }
    }
}

#[test]
fn shapes_whose_size_overflows_are_errors() {
    let err = Tensor::new(vec![usize::MAX / 2, 4], Vec::<f32>::new()).unwrap_err();
    assert!(matches!(err, Error::ShapeTooLarge { .. }), "{err:?}");
    assert!(Model::random(&[usize::MAX / 2, 4], &[Relu], 0).is_err());
    assert!(Model::random(&[0, 4], &[Relu], 0).is_err());
    // The error names the layer whose widths are wrong.
    for (widths, layer) in [(&[3, 0, 4][..], 0), (&[3, 4, 0][..], 1)] {
        match Model::random(widths, &[Relu, Relu], 0) {
            Err(Error::LayerShape { layer: got, .. }) => assert_eq!(got, layer, "{widths:?}"),
            other => panic!("{widths:?}: {other:?}"),
        }
    }
}

#[test]
fn a_timeout_too_long_to_represent_is_no_deadline() {
    let (session, m) = cpu_session();
    let x = input(2, 4, 3);
    let run = session
        .run(&x, &RunOptions::default().timeout(std::time::Duration::MAX))
        .unwrap();
    assert_close(
        "no deadline",
        run.aggregate.as_slice(),
        &reference_forward(&m, &x),
    );
}
