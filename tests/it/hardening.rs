//! Hardening of the bench and the aggregate node: a workload too large for the host
//! is an error and never an abort; a tile, shape, autotune or device timing that
//! cannot run where the members are is an error, never a quiet substitute; weights of
//! any finite magnitude keep their ratios; a member that fails because its device did
//! is reported as such.

use crate::common;

use std::process::{Command, Output};

use common::{cli, stderr};

use wgpu_ensemble::bench::{check_shapes, run_bench, BenchMode, Workload};
use wgpu_ensemble::{
    Activation::*, Aggregate, CoopShape, Error, Fault, FaultPlan, Graph, Model, Placement,
    Precision, QuorumPolicy, RunOptions, Session, SessionOptions, TileConfig,
};

/// `bench --workload gemm` at `batch` rows on the CPU, one run.
fn gemm_on_cpu(batch: &str) -> Output {
    cli(&[
        "bench",
        "--workload",
        "gemm",
        "--batch",
        batch,
        "--device",
        "cpu",
        "--runs",
        "1",
        "--warmup",
        "0",
    ])
}

/// Whether the kernel grants every allocation whatever its size
/// (`vm.overcommit_memory = 1`): there a workload beyond the host's memory is
/// reserved, and only touching it fails.
fn always_overcommits() -> bool {
    std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|v| v.trim() == "1")
}

/// A gemm layer of 100 000² weights (40 GB, and as much again for the input, the
/// outputs and the executor's copy) is refused with `ShapeTooLarge` before anything
/// is allocated; it used to abort ("memory allocation of 40000000000 bytes failed").
#[test]
fn a_gemm_beyond_the_host_memory_is_an_error_not_an_abort() {
    if always_overcommits() {
        eprintln!("gemm beyond the host: vm.overcommit_memory = 1 grants any size, skipped");
        return;
    }
    let out = gemm_on_cpu("100000");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("shape [100000, 100000] has more values than"),
        "{err}"
    );
    assert!(!err.contains("memory allocation"), "{err}");
}

/// A gemm of 3 000 000² weights (36 TB) is more than a 47-bit address space holds:
/// refused wherever it runs, whatever the kernel's overcommit policy.
#[test]
fn a_gemm_beyond_the_address_space_is_an_error_not_an_abort() {
    let out = gemm_on_cpu("3000000");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("more values than"), "{err}");
}

/// A gemm whose weights fit `usize` in values but not in bytes: a typed error, where
/// `Model::random` used to panic on the capacity overflow.
#[test]
fn a_gemm_whose_bytes_overflow_is_an_error() {
    let batch = 3_037_000_499usize; // batch² < 2⁶³, 4 · batch² > 2⁶⁴
    match Workload::Gemm.graph(batch, &Placement::Cpu) {
        Err(Error::ShapeTooLarge { shape }) => assert_eq!(shape, [batch, batch]),
        Err(e) => panic!("expected ShapeTooLarge, got {e}"),
        Ok(_) => panic!("a {batch}² gemm was built"),
    }
    let out = gemm_on_cpu(&batch.to_string());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("more values than"),
        "{}",
        stderr(&out)
    );
}

/// The E workloads at batches whose input or outputs cannot be held are refused the
/// same way, before the graph's weights are made.
#[test]
fn an_ensemble_batch_beyond_the_host_is_an_error() {
    for workload in [Workload::E1, Workload::E2] {
        for batch in [usize::MAX / 8, 1usize << 40] {
            match workload.graph(batch, &Placement::Cpu) {
                Err(Error::ShapeTooLarge { shape }) => assert_eq!(shape[0], batch),
                Err(e) => panic!("{workload:?} at {batch}: expected ShapeTooLarge, got {e}"),
                Ok(_) => panic!("{workload:?} at {batch}: built"),
            }
        }
    }
}

/// One timed run of gemm at batch 8 on `placement` with `options`, as a session.
fn bench_gemm(placement: &Placement, options: SessionOptions, mode: BenchMode) -> Error {
    match run_bench(Workload::Gemm, 8, placement, options, mode, 0, 1) {
        Err(e) => e,
        Ok(report) => panic!(
            "ran {} with adapters {:?}: the options asked for an adapter",
            report.tile, report.adapter
        ),
    }
}

/// A tile, a coop shape, the autotune or device timing with the members on the CPU
/// is refused, naming what was asked and where the members run: the bench used to
/// run the CPU and report the configuration asked for.
#[test]
fn options_only_an_adapter_honours_are_refused_on_the_cpu() {
    let coop = SessionOptions::default().precision(Precision::F16CoopMatrix);
    let cases: [(SessionOptions, &str); 4] = [
        (SessionOptions::default().tile(TileConfig::DEFAULT), "tile"),
        (coop.clone().coop_shape(CoopShape::DEFAULT), "coop shape"),
        (SessionOptions::default().autotune(8), "autotune"),
        (
            SessionOptions::default().device_timing(true),
            "device timing",
        ),
    ];
    for (options, asked) in cases {
        for mode in [BenchMode::Session, BenchMode::Pipeline] {
            let e = bench_gemm(&Placement::Cpu, options.clone(), mode);
            let text = e.to_string();
            assert!(
                matches!(e, Error::NeedsAdapter { .. }),
                "{asked} {mode:?}: {text}"
            );
            assert!(
                text.contains(asked) && text.contains("m0") && text.contains("CPU"),
                "{asked} {mode:?}: {text}"
            );
        }
    }
    // Nothing asked of an adapter: the CPU runs it.
    run_bench(
        Workload::Gemm,
        8,
        &Placement::Cpu,
        SessionOptions::default(),
        BenchMode::Session,
        0,
        1,
    )
    .unwrap();
}

/// A tile or coop shape no kernel takes is refused before any device is opened,
/// whatever the placement: a zero field used to pass unseen on the CPU.
#[test]
fn shapes_no_kernel_takes_are_refused_up_front() {
    let tiles = [
        TileConfig {
            wg_x: 0,
            ..TileConfig::DEFAULT
        },
        TileConfig {
            bk: 0,
            vec4: false,
            ..TileConfig::DEFAULT
        },
        TileConfig {
            tm: 9,
            vec4: false,
            ..TileConfig::DEFAULT
        },
    ];
    for tile in tiles {
        let options = SessionOptions::default().tile(tile);
        assert!(
            matches!(
                check_shapes(&options, "auto"),
                Err(Error::TileUnsupported { .. })
            ),
            "{tile:?}"
        );
        let e = bench_gemm(&Placement::Cpu, options, BenchMode::Session);
        assert!(matches!(e, Error::TileUnsupported { .. }), "{tile:?}: {e}");
    }
    let coop = SessionOptions::default().precision(Precision::F16CoopMatrix);
    let shapes = [
        CoopShape {
            bx: 0,
            by: 0,
            tmc: 0,
            tnc: 0,
            bk: 0,
            prefetch: false,
        },
        CoopShape {
            bk: 0,
            ..CoopShape::DEFAULT
        },
        CoopShape {
            tnc: 5,
            ..CoopShape::DEFAULT
        },
    ];
    for shape in shapes {
        let options = coop.clone().coop_shape(shape);
        let e = check_shapes(&options, "auto").unwrap_err();
        assert!(
            matches!(e, Error::TileUnsupported { .. }) && e.to_string().contains("positive"),
            "{shape:?}: {e}"
        );
    }
    for shape in CoopShape::CANDIDATES {
        check_shapes(&coop.clone().coop_shape(shape), "auto").unwrap();
    }
    for tile in TileConfig::CANDIDATES {
        check_shapes(&SessionOptions::default().tile(tile), "auto").unwrap();
    }
}

/// The command line of the report: `--coop-shape 0,0,0,0,0` fails before any device
/// is opened, and a valid shape with `--device auto` and no adapter that runs
/// cooperative matrices fails naming the shape and the CPU (it used to exit 0 with
/// `"adapter": ["cpu"]`).
#[test]
fn bench_refuses_a_coop_shape_that_cannot_run() {
    let coop = |shape: &str| {
        cli(&[
            "bench",
            "--workload",
            "gemm",
            "--batch",
            "8",
            "--precision",
            "f16-coop",
            "--coop-shape",
            shape,
            "--runs",
            "1",
            "--warmup",
            "0",
            "--json",
        ])
    };
    let out = coop("0,0,0,0,0");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bx: 0") && err.contains("positive values"),
        "{err}"
    );
    let out = coop("2,2,2,2,2");
    let coop_adapter = common::usable_adapters("bench coop shape on auto")
        .iter()
        .any(|a| !a.cooperative_matrix.is_empty());
    if coop_adapter {
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("\"cpu\""), "{text}");
    } else {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("coop shape") && err.contains("on the CPU") && err.contains("auto"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "a report was printed");
    }
}

/// Weights the user wrote in f64 keep their ratios however tiny or huge:
/// `[1e-50, 1e-50]` used to be "all zero" once narrowed to f32, and `[1e308, 1e-308]`
/// refused as beyond f32's range.
#[test]
fn tiny_and_huge_weights_are_normalised_before_narrowing() {
    assert_eq!(
        Aggregate::normalise_weights(&[1e-50, 1e-50]).unwrap(),
        [0.5, 0.5]
    );
    assert_eq!(
        Aggregate::normalise_weights(&[1e308, 1e-308]).unwrap(),
        [1.0, 0.0]
    );
    assert_eq!(
        Aggregate::normalise_weights(&[3e-300, 1e-300]).unwrap(),
        [0.75, 0.25]
    );
    assert!(matches!(
        Aggregate::normalise_weights(&[0.0, 0.0]),
        Err(Error::AggregateWeightsAllZero)
    ));
    assert!(matches!(
        Aggregate::normalise_weights(&[1.0, -1e-300]),
        Err(Error::AggregateWeight { index: 1, .. })
    ));
    // A graph with the tiny weights averages as the mean does.
    let models: Vec<Model> = (0..2)
        .map(|i| Model::random(&[5, 3], &[Softmax], 90 + i).unwrap())
        .collect();
    let graph = |aggregate: Aggregate| {
        let mut g = Graph::builder(5).aggregate(aggregate);
        for (i, m) in models.iter().enumerate() {
            g = g.member(format!("m{i}"), m.clone(), Placement::Cpu);
        }
        Session::new(g.build().unwrap()).unwrap()
    };
    let tiny = Aggregate::WeightedMean(Aggregate::normalise_weights(&[1e-50, 1e-50]).unwrap());
    let x = common::input(4, 5, 91);
    let got = graph(tiny).run(&x, &RunOptions::default()).unwrap();
    let want = graph(Aggregate::Mean)
        .run(&x, &RunOptions::default())
        .unwrap();
    assert_eq!(got.aggregate.as_slice(), want.aggregate.as_slice());
}

/// Members sharing the CPU with a member whose device is lost by fault injection
/// fail because their device did, naming that member; only the member the fault
/// named fails "by fault injection". `b` used to be reported as failed by fault
/// injection itself.
#[test]
fn a_member_sharing_a_lost_cpu_is_reported_failed_by_its_device() {
    let mut g = Graph::builder(5);
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let model = Model::random(&[5, 3], &[Softmax], 80 + i as u64).unwrap();
        g = g.member(name, model, Placement::Cpu);
    }
    let plan = FaultPlan::new()
        .on_run("a", 0, Fault::LoseDevice)
        .on_run("c", 0, Fault::Fail);
    let session =
        Session::with_options(g.build().unwrap(), SessionOptions::default().faults(plan)).unwrap();
    let x = common::input(2, 5, 81);
    let e = session
        .run(&x, &RunOptions::default().quorum(QuorumPolicy::Quorum(1)))
        .unwrap_err();
    let Error::QuorumNotMet { missing, .. } = &e else {
        panic!("expected QuorumNotMet, got {e}");
    };
    let of = |name: &str| {
        missing
            .iter()
            .find(|m| m.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} missing from {missing:?}"))
            .clone()
    };
    let (a, b, c) = (of("a"), of("b"), of("c"));
    assert!(a.contains("member 'a' failed by fault injection"), "{a}");
    assert!(c.contains("member 'c' failed by fault injection"), "{c}");
    assert!(
        b.contains("device cpu was lost")
            && b.contains("fault injection on member 'a'")
            && b.contains("member 'b'"),
        "{b}"
    );
    assert!(!b.contains("member 'b' failed by fault injection"), "{b}");
    // The next run has no fault: every member finishes.
    session.run(&x, &RunOptions::default()).unwrap();
}

/// The process's anonymous executable mappings: code a driver compiled at run time
/// (llvmpipe's JIT), one or more per shader it compiles.
fn jit_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() == 5 && fields[1].contains('x') && fields[4] == "0"
        })
        .count()
}

const JIT_CHILD: &str = "WGPU_ENSEMBLE_HARDENING_JIT_CHILD";

/// Runs at 2 to 16 rows compile no code after the first: Mesa's lavapipe (22.3)
/// inlined the small-batch kernel's uniforms and compiled it again at every dispatch,
/// never freeing the code (max RSS 230 MB after 50 runs of E1 at batch 8, 875 MB after
/// 400). Counted in a process of its own (this test alone), since other tests compile
/// pipelines while they run: the JIT's mappings after the warm-up runs and after five
/// more are as many.
#[test]
fn small_batches_compile_no_code_per_run() {
    let name = "hardening::small_batches_compile_no_code_per_run";
    if std::env::var_os(JIT_CHILD).is_none() {
        if !std::path::Path::new("/proc/self/maps").exists() {
            eprintln!("SKIPPED {name}: no /proc/self/maps");
            return;
        }
        if common::usable_adapters(name).is_empty() {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(JIT_CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    // E1's shape, narrower: two layers share the small kernel's relu pipeline.
    let models: Vec<Model> = (0..2)
        .map(|i| Model::random(&[96, 64, 64, 10], &[Relu, Relu, Softmax], 60 + i).unwrap())
        .collect();
    for adapter in common::usable_adapters(name) {
        let mut g = Graph::builder(96);
        for (i, m) in models.iter().enumerate() {
            g = g.member(
                format!("m{i}"),
                m.clone(),
                Placement::Adapter(adapter.index),
            );
        }
        let session = Session::new(g.build().unwrap()).unwrap();
        for batch in [2, 16] {
            let x = common::input(batch, 96, batch as u64);
            for _ in 0..2 {
                session.run(&x, &RunOptions::default()).unwrap();
            }
            let before = jit_mappings();
            for _ in 0..5 {
                session.run(&x, &RunOptions::default()).unwrap();
            }
            let after = jit_mappings();
            assert_eq!(
                after,
                before,
                "{adapter} batch {batch}: {} code mappings made by five runs",
                after as i64 - before as i64
            );
        }
    }
}

/// A manifest's tiny and huge weights keep their ratios too: they are normalised in
/// f64 before they become f32 (a manifest narrowed them first: `[1e-50, 1e-50]` were
/// "all zero" and `[1e308, 1e-308]` "beyond f32's range").
#[test]
fn manifest_weights_are_normalised_before_narrowing() {
    let dir = common::golden("");
    for (weights, want) in [
        ("[1e-50, 1e-50]", [0.5f32, 0.5]),
        ("[1e308, 1e-308]", [1.0, 0.0]),
    ] {
        let text = format!(
            "[aggregate]\nkind = \"weighted_mean\"\nweights = {weights}\n\n\
             [[member]]\nname = \"a\"\nfile = \"seq-relu.safetensors\"\ndevice = \"cpu\"\n\n\
             [[member]]\nname = \"b\"\nfile = \"seq-relu.safetensors\"\ndevice = \"cpu\"\n"
        );
        let manifest = wgpu_ensemble::io::Manifest::parse(&dir.join("weights.toml"), &text)
            .unwrap_or_else(|e| panic!("{weights}: {e}"));
        let graph = manifest
            .graph(None)
            .unwrap_or_else(|e| panic!("{weights}: {e}"));
        match graph.aggregate() {
            Aggregate::WeightedMean(w) => assert_eq!(w.as_slice(), want, "{weights}"),
            other => panic!("{weights}: {other:?}"),
        }
    }
}
