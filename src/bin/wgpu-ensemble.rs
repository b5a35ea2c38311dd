//! The `wgpu-ensemble` command-line tool: list devices, run an ensemble manifest on a
//! `.npy` input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use wgpu_ensemble::bench::{run_bench, BenchMode, BenchReport, Workload};
use wgpu_ensemble::io::{read_matrix, Manifest};
use wgpu_ensemble::{
    probe_adapters, CoopShape, Fault, FaultPlan, MemberStatus, Placement, Precision, QuorumPolicy,
    RunOptions, Session, SessionOptions, Tensor, TileConfig,
};

#[derive(Parser)]
#[command(
    name = "wgpu-ensemble",
    version,
    about = "Run neural-network ensembles on every GPU and the CPU through wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter: index, backend, type, name, whether a device can be created on it, and what it offers (f16, cooperative matrices, subgroup sizes).
    Devices,
    /// Run an ensemble manifest on a .npy input and write the aggregate as .npy.
    Predict {
        /// The ensemble manifest (TOML).
        #[arg(long)]
        manifest: PathBuf,
        /// Input rows: .npy [batch, features], float32 or float64, C order.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the aggregate: .npy float32 [batch, outputs].
        #[arg(long)]
        output: PathBuf,
        /// Also write every member's output: .npy float32 [members, batch, outputs].
        #[arg(long)]
        members_output: Option<PathBuf>,
        /// Fail when the members have not all answered within this many milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Run every member here instead of its manifest device: auto, cpu, adapter:N, adapter:N/queue:K.
        #[arg(long)]
        device: Option<String>,
        /// Aggregate over the members that finished (before --timeout-ms) when at least K did; the missing ones are listed on stderr.
        #[arg(long, value_name = "K")]
        quorum: Option<usize>,
        /// Arithmetic of the GPU kernels: f32 (default), f16, or f16-coop (cooperative matrices).
        #[arg(long, default_value = "f32")]
        precision: String,
        /// For testing: inject a fault into a member, MEMBER=fail|panic|lose-device|sleep:MS (repeatable).
        #[arg(long, value_name = "MEMBER=KIND")]
        fault: Vec<String>,
    },
    /// Time a standard workload: gemm (an N x N layer at batch N), E1 (4 x 784-512-512-10) or E2 (8 x 1024-4096-4096-1024).
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
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
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => {
            devices();
            Ok(())
        }
        Command::Predict {
            manifest,
            input,
            output,
            members_output,
            timeout_ms,
            device,
            quorum,
            precision,
            fault,
        } => predict(&PredictArgs {
            precision: &precision,
            faults: &fault,
            manifest: &manifest,
            input: &input,
            output: &output,
            members_output: members_output.as_deref(),
            timeout_ms,
            device: device.as_deref(),
            quorum,
        }),
        Command::Bench(args) => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wgpu-ensemble: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn devices() {
    let probes = probe_adapters();
    if probes.is_empty() {
        println!("no adapters found; members placed on `auto` run on the CPU");
    }
    for p in probes {
        let usable = match &p.usable {
            Ok(()) => "usable".to_string(),
            Err(why) => format!("unusable: {why}"),
        };
        let mut extras = Vec::new();
        if p.info
            .features
            .contains(wgpu_ensemble::wgpu::Features::SHADER_F16)
        {
            extras.push("f16".to_string());
        }
        if p.info
            .features
            .contains(wgpu_ensemble::wgpu::Features::TIMESTAMP_QUERY)
        {
            extras.push("timestamps".to_string());
        }
        for c in &p.info.cooperative_matrix {
            extras.push(format!(
                "coop {}x{}x{} {:?}->{:?}",
                c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
            ));
        }
        if p.info
            .features
            .contains(wgpu_ensemble::wgpu::Features::SUBGROUP)
        {
            extras.push(format!(
                "subgroup {}..{}",
                p.info.subgroup_sizes.0, p.info.subgroup_sizes.1
            ));
        }
        println!(
            "{}\t{:?}\t{:?}\t{}\t{}\t{}",
            p.info.index,
            p.info.backend,
            p.info.device_type,
            p.info.name,
            usable,
            extras.join(", ")
        );
    }
    println!("cpu\t-\tCpu\thost CPU\tusable");
}

/// A bad command-line value, reported like a file error naming the flag.
fn flag_error(flag: &str, message: &str) -> wgpu_ensemble::Error {
    wgpu_ensemble::Error::Io {
        path: flag.into(),
        message: message.to_string(),
    }
}

/// Five comma-separated numbers, for `--tile` and `--coop-shape`.
fn five(flag: &str, text: &str) -> wgpu_ensemble::Result<[u32; 5]> {
    let bad = || {
        flag_error(
            flag,
            &format!("'{text}': expected five comma-separated integers"),
        )
    };
    let values: Vec<u32> = text
        .split(',')
        .map(|v| v.trim().parse::<u32>().map_err(|_| bad()))
        .collect::<wgpu_ensemble::Result<_>>()?;
    <[u32; 5]>::try_from(values).map_err(|_| bad())
}

fn bench(args: &BenchArgs) -> wgpu_ensemble::Result<()> {
    let workload: Workload = args.workload.parse()?;
    let placement: Placement = args.device.parse()?;
    let precision = args.precision.parse::<Precision>()?;
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
    let mut options = SessionOptions::default()
        .precision(precision)
        .device_timing(args.device_timing);
    if args.autotune {
        options = options.autotune(args.batch);
    }
    if let Some(path) = &args.autotune_cache {
        options = options.autotune_cache(path);
    }
    options = options.spin_wait(Duration::from_micros(args.spin_us));
    if let Some(text) = &args.tile {
        // Five numbers, then the words `vec4` (dense_vec4.wgsl) and `prefetch`.
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let split = fields.len().min(5);
        let (numbers, words) = fields.split_at(split);
        let bad = || {
            flag_error(
                "--tile",
                &format!(
                    "'{text}': expected five comma-separated integers, then optionally vec4 \
                     and then prefetch"
                ),
            )
        };
        // Each word once, prefetch only with vec4.
        let known = |w: &&str| matches!(*w, "vec4" | "prefetch");
        let once = |w: &str| words.iter().filter(|x| **x == w).count() <= 1;
        if !words.iter().all(known)
            || !once("vec4")
            || !once("prefetch")
            || (words.contains(&"prefetch") && !words.contains(&"vec4"))
        {
            return Err(bad());
        }
        let [wg_x, wg_y, tm, tn, bk] = five("--tile", &numbers.join(",")).map_err(|_| bad())?;
        options = options.tile(TileConfig {
            wg_x,
            wg_y,
            tm,
            tn,
            bk,
            vec4: words.contains(&"vec4"),
            prefetch: words.contains(&"prefetch"),
        });
    }
    if let Some(text) = &args.coop_shape {
        // Five numbers, then optionally the word `prefetch`.
        let (numbers, prefetch) = match text.rsplit_once(',') {
            Some((numbers, word)) if word.trim() == "prefetch" => (numbers, true),
            _ => (text.as_str(), false),
        };
        let [bx, by, tmc, tnc, bk] = five("--coop-shape", numbers).map_err(|_| {
            flag_error(
                "--coop-shape",
                &format!(
                    "'{text}': expected five comma-separated integers, then optionally \
                     prefetch"
                ),
            )
        })?;
        options = options.coop_shape(CoopShape {
            bx,
            by,
            tmc,
            tnc,
            bk,
            prefetch,
        });
    }
    if args.trusted_kernels {
        // SAFETY: asked for on the command line; see SessionOptions::trusted_kernels.
        options = unsafe { options.trusted_kernels() };
    }
    let mode = match args.mode.as_str() {
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
                &format!("'{other}': expected session, pipeline or late-member"),
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
            // A sweep goes on past a candidate the device cannot run...
            Err(e) if sweep => {
                eprintln!("wgpu-ensemble: {e}");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    // ... but fails when it could run none.
    match last_error {
        Some(e) if reported == 0 => Err(e),
        _ => Ok(()),
    }
}

fn print_report(report: &BenchReport, json: bool) -> wgpu_ensemble::Result<()> {
    if json {
        let text = serde_json::to_string(report).map_err(|e| wgpu_ensemble::Error::Io {
            path: "stdout".into(),
            message: e.to_string(),
        })?;
        println!("{text}");
    } else {
        let device = match (report.device_p50_ms, report.device_gflops) {
            (Some(ms), Some(gflops)) => {
                format!("; kernels alone p50 {ms:.3} ms, {gflops:.2} GFLOP/s")
            }
            (Some(ms), None) => format!("; kernels alone p50 {ms:.3} ms"),
            _ => String::new(),
        };
        println!(
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

struct PredictArgs<'a> {
    manifest: &'a Path,
    input: &'a Path,
    output: &'a Path,
    members_output: Option<&'a Path>,
    timeout_ms: Option<u64>,
    device: Option<&'a str>,
    quorum: Option<usize>,
    precision: &'a str,
    faults: &'a [String],
}

/// Parses `MEMBER=fail|panic|lose-device|sleep:MS` into a plan for the first run.
fn fault_plan(specs: &[String]) -> wgpu_ensemble::Result<FaultPlan> {
    let mut plan = FaultPlan::new();
    for spec in specs {
        let bad = || {
            flag_error(
                "--fault",
                &format!("'{spec}': expected MEMBER=fail|panic|lose-device|sleep:MS"),
            )
        };
        let (member, kind) = spec.split_once('=').ok_or_else(bad)?;
        let fault = match kind {
            "fail" => Fault::Fail,
            "panic" => Fault::Panic,
            "lose-device" => Fault::LoseDevice,
            other => {
                let ms = other.strip_prefix("sleep:").ok_or_else(bad)?;
                Fault::Sleep(Duration::from_millis(ms.parse().map_err(|_| bad())?))
            }
        };
        plan = plan.on_run(member, 0, fault);
    }
    Ok(plan)
}

fn predict(args: &PredictArgs<'_>) -> wgpu_ensemble::Result<()> {
    let started = Instant::now();
    let device: Option<Placement> = args.device.map(str::parse).transpose()?;
    let manifest = Manifest::load(args.manifest)?;
    let x = read_matrix(args.input)?;
    let session_options = SessionOptions::default()
        .precision(args.precision.parse::<Precision>()?)
        .faults(fault_plan(args.faults)?);
    let session = Session::with_options(manifest.graph(device.as_ref())?, session_options)?;
    let mut options = RunOptions::default().member_outputs(args.members_output.is_some());
    if let Some(ms) = args.timeout_ms {
        options = options.timeout(Duration::from_millis(ms));
    }
    if let Some(k) = args.quorum {
        options = options.quorum(QuorumPolicy::Quorum(k));
    }
    let run = session.run(&x, &options)?;
    for m in run.missing() {
        let why = match &m.status {
            MemberStatus::Late => "late".to_string(),
            MemberStatus::Failed(e) => format!("failed: {e}"),
            other => format!("{other:?}"),
        };
        eprintln!(
            "wgpu-ensemble: member '{}' is missing from the aggregate: {why}",
            m.name
        );
    }

    // Every output is complete in memory before any file is written; each file is
    // written under a temporary name and renamed.
    let mut files = vec![(args.output.to_path_buf(), run.aggregate.clone())];
    if let Some(path) = args.members_output {
        // A member missing from a quorum run has NaN rows.
        let (rows, cols) = run.aggregate.dims2("aggregate")?;
        let mut all = Vec::with_capacity(run.members.len() * rows * cols);
        for m in &run.members {
            match &m.output {
                Some(out) => all.extend_from_slice(out.as_slice()),
                None => all.extend(std::iter::repeat_n(f32::NAN, rows * cols)),
            }
        }
        files.push((
            path.to_path_buf(),
            Tensor::new(vec![run.members.len(), rows, cols], all)?,
        ));
    }
    wgpu_ensemble::io::write_tensors(&files)?;

    let mut devices: Vec<String> = session.devices().map(ToString::to_string).collect();
    devices.dedup();
    eprintln!(
        "wgpu-ensemble: {} members ({} finished) on {} device(s) [{}], batch {}, run {:.3} ms, total {:.3} ms",
        run.members.len(),
        run.members.len() - run.missing().count(),
        devices.len(),
        devices.join("; "),
        x.shape()[0],
        run.elapsed.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
