//! `wgpu-ensemble bench`: time a standard workload (session, pipeline or late-member
//! mode), optionally sweeping the tile candidates; or, with `--split`, one member whole
//! against split across devices.

use std::time::Duration;

use wgpu_ensemble::bench::{
    check_shapes, run_bench, run_split_bench, run_uncertainty_bench, BenchMode, BenchReport,
    SplitBenchReport, Workload,
};
use wgpu_ensemble::{CoopShape, Placement, Precision, SessionOptions, SplitKind, TileConfig};

use crate::{flag_error, CliResult};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// gemm, E1 or E2.
    #[arg(long)]
    workload: String,
    /// Rows per run (for gemm, also the layer's size).
    #[arg(long)]
    batch: usize,
    /// f32 (default), f16, or f16-coop (cooperative matrices).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Where every member runs: auto (default), cpu, adapter:N, adapter:N/queue:K.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Untimed runs first (pipelines compile on the first).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// session (Session::run in a loop), pipeline (a stream through the between-graph Pipeline) or late-member (a quorum run while member 0 is always late).
    #[arg(long, default_value = "session")]
    mode: String,
    /// With --mode session: time Session::run_device on an input uploaded once, the aggregate left on the device where one GPU device holds every member (the JSON's mode is `resident`).
    #[arg(long)]
    resident: bool,
    /// The run timeout of --mode late-member, in milliseconds.
    #[arg(long, default_value_t = 50)]
    late_timeout_ms: u64,
    /// Time the dense kernel's tile candidates (coop shapes with f16-coop) at session build and use the fastest.
    #[arg(long)]
    autotune: bool,
    /// With --autotune: keep the timed choices in this TOML file (read first, written after each timing; SessionOptions::autotune_cache).
    #[arg(long, value_name = "PATH", requires = "autotune")]
    autotune_cache: Option<std::path::PathBuf>,
    /// A fixed tile for f32 and f16: WG_X,WG_Y,TM,TN,BK, then `,vec4` for the kernels with runs of four and `,prefetch` for their slices loaded ahead (see TileConfig).
    #[arg(
        long,
        value_name = "WG_X,WG_Y,TM,TN,BK[,vec4[,prefetch]]",
        conflicts_with = "autotune"
    )]
    tile: Option<String>,
    /// A fixed shape for f16-coop: BX,BY,TMC,TNC,BK, then `,prefetch` for slices loaded ahead (see CoopShape).
    #[arg(
        long,
        value_name = "BX,BY,TMC,TNC,BK[,prefetch]",
        conflicts_with = "autotune"
    )]
    coop_shape: Option<String>,
    /// Run once per candidate tile (per candidate shape with f16-coop), one report each; fails if none ran.
    #[arg(long, conflicts_with_all = ["tile", "coop_shape", "autotune"])]
    sweep: bool,
    /// Compile the kernels without wgpu's runtime bounds checks (SessionOptions::trusted_kernels).
    #[arg(long)]
    trusted_kernels: bool,
    /// Busy-poll this many microseconds wherever a run waits (the device, the workers, the caller) before sleeping (SessionOptions::spin_wait).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    spin_us: u64,
    /// Also time the kernels alone with timestamp queries and report device_p50_ms and device_gflops (SessionOptions::device_timing; needs TIMESTAMP_QUERY).
    #[arg(long)]
    device_timing: bool,
    /// Time one member of the workload's shape (E1 or E2) whole on the first of --devices and split across all of them, interleaved in one run: layers (1, 2, 4 and 8 micro-batches), columns, or all (both).
    #[arg(long, value_name = "layers|columns|all")]
    split: Option<String>,
    /// With --split: the devices, comma-separated (cpu, adapter:N, adapter:N/queue:K, auto); a device may repeat.
    #[arg(long, value_name = "D1,D2,...")]
    devices: Option<String>,
    /// Time the workload (E1 or E2) without and with every uncertainty output (RunOptions::uncertainty), alternating in one run; reports both and their ratio.
    #[arg(long, conflicts_with_all = ["split", "devices", "sweep", "resident"])]
    uncertainty: bool,
    /// Print one JSON object instead of a line of text (with --split or --uncertainty, one per variant).
    #[arg(long)]
    json: bool,
}

pub(crate) fn bench(args: &BenchArgs) -> CliResult {
    let workload: Workload = args.workload.parse()?;
    if args.split.is_some() || args.devices.is_some() {
        return split_bench(args, workload);
    }
    if args.uncertainty {
        return uncertainty_bench(args, workload);
    }
    let placement: Placement = args.device.parse()?;
    let precision = args.precision.parse::<Precision>()?;
    tile_flags(args, precision)?;
    let shaped = args.tile.is_some() || args.coop_shape.is_some() || args.sweep;
    if shaped && matches!(placement, Placement::Cpu) {
        return Err(flag_error(
            "--device",
            "the CPU executor has no tiles: --tile, --coop-shape and --sweep need an adapter",
        ));
    }
    if args.device_timing && matches!(placement, Placement::Cpu) {
        return Err(flag_error(
            "--device",
            "the CPU executor has no device timing: --device-timing needs an adapter",
        ));
    }
    let options = session_options(args, precision)?;
    // A tile or shape no kernel takes (a zero field, too many accumulators) is refused
    // here, before any device is opened: on the CPU it would otherwise never be seen.
    check_shapes(&options, &args.device)?;
    if args.resident && args.mode != "session" {
        return Err(flag_error(
            "--resident",
            format!(
                "times Session::run_device: it goes with --mode session, not '{}'",
                args.mode
            ),
        ));
    }
    let mode = match args.mode.as_str() {
        "session" if args.resident => BenchMode::Resident,
        "session" => BenchMode::Session,
        "pipeline" => BenchMode::Pipeline,
        "late-member" if workload == Workload::Gemm => {
            return Err(flag_error(
                "--mode",
                "late-member needs a workload of several members (E1 or E2); gemm has one",
            ))
        }
        "late-member" => BenchMode::LateMember(Duration::from_millis(args.late_timeout_ms)),
        other => {
            return Err(flag_error(
                "--mode",
                format!("'{other}': expected session, pipeline or late-member"),
            ))
        }
    };
    let variants: Vec<SessionOptions> = match (args.sweep, precision) {
        (false, _) => vec![options],
        (true, Precision::F16CoopMatrix) => CoopShape::CANDIDATES
            .iter()
            .map(|&c| options.clone().coop_shape(c))
            .collect(),
        (true, _) => TileConfig::CANDIDATES
            .iter()
            .map(|&t| options.clone().tile(t))
            .collect(),
    };
    let sweep = variants.len() > 1;
    let mut last_error = None;
    let mut reported = 0;
    for options in variants {
        let result = run_bench(
            workload,
            args.batch,
            &placement,
            options,
            mode,
            args.warmup,
            args.runs,
        );
        match result {
            Ok(report) => {
                print_report(&report, args.json)?;
                reported += 1;
            }
            // Members on the CPU run no candidate: the sweep stops at the first.
            Err(e) if sweep && on_cpu(&e) => {
                return Err(flag_error("--sweep", format!("no candidate can run: {e}")))
            }
            // A sweep goes on past a candidate the device cannot run...
            Err(e) if sweep => {
                eprintln!("wgpu-ensemble: {e}");
                last_error = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // ... but fails when it could run none.
    match last_error {
        Some(e) if reported == 0 => Err(e.into()),
        _ => Ok(()),
    }
}

/// `--tile` goes with f32 and f16, `--coop-shape` with f16-coop.
fn tile_flags(args: &BenchArgs, precision: Precision) -> CliResult {
    let coop = precision == Precision::F16CoopMatrix;
    if args.tile.is_some() && coop {
        return Err(flag_error(
            "--tile",
            "applies to f32 and f16; f16-coop takes --coop-shape",
        ));
    }
    if args.coop_shape.is_some() && !coop {
        return Err(flag_error(
            "--coop-shape",
            "applies to --precision f16-coop",
        ));
    }
    Ok(())
}

/// The session options the flags ask for: precision, device timing, autotune and its
/// cache, spin-wait, a fixed tile or coop shape, trusted kernels.
fn session_options(
    args: &BenchArgs,
    precision: Precision,
) -> Result<SessionOptions, crate::CliError> {
    let mut options = SessionOptions::default()
        .precision(precision)
        .device_timing(args.device_timing)
        .spin_wait(Duration::from_micros(args.spin_us));
    if args.autotune {
        options = options.autotune(args.batch);
    }
    if let Some(path) = &args.autotune_cache {
        options = options.autotune_cache(path);
    }
    if let Some(text) = &args.tile {
        options = options.tile(text.parse::<TileConfig>()?);
    }
    if let Some(text) = &args.coop_shape {
        options = options.coop_shape(text.parse::<CoopShape>()?);
    }
    if args.trusted_kernels {
        // SAFETY: asked for on the command line; see SessionOptions::trusted_kernels.
        options = unsafe { options.trusted_kernels() };
    }
    Ok(options)
}

/// `bench --split`: one member whole and split, interleaved (`run_split_bench`).
fn split_bench(args: &BenchArgs, workload: Workload) -> CliResult {
    let (Some(split), Some(devices)) = (&args.split, &args.devices) else {
        return Err(match args.split {
            Some(_) => flag_error("--split", "needs --devices, the devices to split across"),
            None => flag_error("--devices", "goes with --split (layers, columns or all)"),
        });
    };
    let kinds = match split.trim().to_ascii_lowercase().as_str() {
        "all" => vec![SplitKind::Layers, SplitKind::Columns],
        other => match other.parse::<SplitKind>() {
            Ok(kind) => vec![kind],
            Err(_) => {
                return Err(flag_error(
                    "--split",
                    format!("'{}': expected layers, columns or all", quote(split)),
                ))
            }
        },
    };
    if workload == Workload::Gemm {
        return Err(flag_error(
            "--split",
            "needs a member of several layers (E1 or E2); gemm is a single layer",
        ));
    }
    let placements = parse_devices(devices)?;
    // What times something else than Session::run of one member, or reports what a
    // split member does not measure, is refused rather than ignored.
    let session_only = "the variants are timed with Session::run (--mode session)";
    let refused = [
        (
            args.device != "auto",
            "--device",
            "the devices are --devices",
        ),
        (args.mode != "session", "--mode", session_only),
        (args.resident, "--resident", session_only),
        (
            args.sweep,
            "--sweep",
            "one tile for every variant; give --tile",
        ),
        (
            args.device_timing,
            "--device-timing",
            "a split member's parts report no device time",
        ),
    ];
    if let Some((_, flag, why)) = refused.iter().find(|r| r.0) {
        return Err(flag_error(flag, format!("not with --split: {why}")));
    }
    let precision = args.precision.parse::<Precision>()?;
    tile_flags(args, precision)?;
    let options = session_options(args, precision)?;
    let reports = run_split_bench(
        workload,
        args.batch,
        &placements,
        &kinds,
        options,
        args.warmup,
        args.runs,
    )?;
    if args.json {
        for report in &reports {
            outln!("{}", to_json(report)?);
        }
    } else {
        print_split_table(&reports);
    }
    Ok(())
}

/// `bench --uncertainty`: the plain mean against every uncertainty output, alternating
/// (`run_uncertainty_bench`).
fn uncertainty_bench(args: &BenchArgs, workload: Workload) -> CliResult {
    if args.mode != "session" {
        return Err(flag_error(
            "--mode",
            "not with --uncertainty: the variants are timed with Session::run (--mode session)",
        ));
    }
    let placement: Placement = args.device.parse()?;
    let precision = args.precision.parse::<Precision>()?;
    tile_flags(args, precision)?;
    let options = session_options(args, precision)?;
    check_shapes(&options, &args.device)?;
    let reports = run_uncertainty_bench(
        workload,
        args.batch,
        &placement,
        options,
        args.warmup,
        args.runs,
    )?;
    for r in &reports {
        if args.json {
            outln!("{}", to_json(r)?);
        } else {
            outln!(
                "{} batch {} on {}: {:<11} p50 {:.3} ms, p90 {:.3} ms, {:.2}x the plain mean ({} runs)",
                r.workload, r.batch, r.device, r.variant, r.p50_ms, r.p90_ms, r.ratio_to_mean, r.runs
            );
        }
    }
    Ok(())
}

/// `--devices`: comma-separated placements, at least one, each named when it is wrong.
fn parse_devices(text: &str) -> Result<Vec<Placement>, crate::CliError> {
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    if items.iter().all(|i| i.is_empty()) {
        return Err(flag_error(
            "--devices",
            "no device given; expected at least one, comma-separated (e.g. cpu,adapter:0)",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.parse::<Placement>().map_err(|e| {
                flag_error(
                    "--devices",
                    format!("device {} of '{}': {e}", i + 1, quote(text)),
                )
            })
        })
        .collect()
}

/// At most 200 characters of what the user gave, for a message.
fn quote(text: &str) -> String {
    text.chars().take(200).collect()
}

/// The split bench's variants as a table, the whole member's first.
fn print_split_table(reports: &[SplitBenchReport]) {
    let Some(first) = reports.first() else {
        return;
    };
    outln!(
        "{} one member, batch {}, {} ({}), devices [{}]; {} timed runs each, interleaved",
        first.workload,
        first.batch,
        first.precision,
        first.tile,
        first.devices.join(", "),
        first.runs
    );
    outln!(
        "{:<11} {:>11} {:>11} {:>12} {:>9} {:>10}  devices",
        "variant",
        "p50 ms",
        "p90 ms",
        "rows/s",
        "speedup",
        "max diff"
    );
    for r in reports {
        let stages = r
            .stages
            .as_ref()
            .map(|s| {
                let s: Vec<String> = s.iter().map(|[a, b]| format!("{a}..{b}")).collect();
                format!(" (layers {})", s.join(" | "))
            })
            .unwrap_or_default();
        outln!(
            "{:<11} {:>11.3} {:>11.3} {:>12.1} {:>9.2} {:>10.1e}  {}{}",
            r.variant,
            r.p50_ms,
            r.p90_ms,
            r.throughput_rows_per_s,
            r.speedup,
            r.max_abs_diff,
            r.adapter.join(", "),
            stages
        );
    }
}

fn to_json(report: &impl serde::Serialize) -> wgpu_ensemble::Result<String> {
    serde_json::to_string(report).map_err(|e| wgpu_ensemble::Error::Io {
        path: "stdout".into(),
        message: e.to_string(),
    })
}

/// Whether `e` is `run_bench`'s refusal of tiles for members on the CPU.
fn on_cpu(e: &wgpu_ensemble::Error) -> bool {
    matches!(e, wgpu_ensemble::Error::NeedsAdapter { .. })
}

fn print_report(report: &BenchReport, json: bool) -> wgpu_ensemble::Result<()> {
    if json {
        outln!("{}", to_json(report)?);
    } else {
        let device = match (report.device_p50_ms, report.device_gflops) {
            (Some(ms), Some(gflops)) => {
                format!("; kernels alone p50 {ms:.3} ms, {gflops:.2} GFLOP/s")
            }
            (Some(ms), None) => format!("; kernels alone p50 {ms:.3} ms"),
            _ => String::new(),
        };
        outln!(
            "{} {} batch {} {} ({}) on [{}]: p50 {:.3} ms, p99 {:.3} ms, {:.1} rows/s, {:.2} GFLOP/s{}",
            report.workload,
            report.mode,
            report.batch,
            report.precision,
            report.tile,
            report.adapter.join("; "),
            report.p50_ms,
            report.p99_ms,
            report.throughput_rows_per_s,
            report.gflops,
            device
        );
    }
    Ok(())
}
