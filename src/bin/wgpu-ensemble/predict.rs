//! `wgpu-ensemble predict`: run an ensemble manifest on a `.npy` input and write the
//! aggregate (and the members' outputs) as `.npy`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wgpu_ensemble::io::{check_outputs, read_matrix, stage_tensors, Manifest};
use wgpu_ensemble::{
    Activation, ExecutionDevice, Fault, FaultPlan, MemberStatus, Placement, Precision,
    QuorumPolicy, RunOptions, Session, SessionOptions, Tensor,
};

#[derive(clap::Args)]
pub(crate) struct PredictArgs {
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
    /// Also write how much the members that answered disagree: .npy float32 [batch, 4] (entropy, expected entropy, mutual information, disagreement; natural logarithms).
    #[arg(long, value_name = "PATH")]
    uncertainty_output: Option<PathBuf>,
    /// Also write each class's variance across the members that answered: .npy float32 [batch, outputs].
    #[arg(long, value_name = "PATH")]
    variance_output: Option<PathBuf>,
    /// Fail when the members have not all answered within this many milliseconds (at least 1; leave it out for no deadline).
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
    /// For testing: inject a fault into a member, MEMBER=fail|panic|lose-device|lose-device-permanently|sleep:MS (repeatable).
    #[arg(long, value_name = "MEMBER=KIND")]
    fault: Vec<String>,
}

/// Parses `MEMBER=KIND` (see [`Fault`]'s `FromStr`) into a plan for the first run.
fn fault_plan(specs: &[String]) -> Result<FaultPlan, crate::CliError> {
    let mut plan = FaultPlan::new();
    for spec in specs {
        let (member, kind) = spec.split_once('=').ok_or_else(|| {
            crate::flag_error(
                "--fault",
                format!(
                    "'{spec}': expected MEMBER=fail|panic|lose-device|lose-device-permanently|sleep:MS"
                ),
            )
        })?;
        let fault = kind
            .parse::<Fault>()
            .map_err(|e| crate::flag_error("--fault", format!("'{spec}': {e}")))?;
        plan = plan.on_run(member, 0, fault);
    }
    Ok(plan)
}

pub(crate) fn predict(args: &PredictArgs) -> crate::CliResult {
    let started = Instant::now();
    let device: Option<Placement> = args.device.as_deref().map(str::parse).transpose()?;
    let manifest = Manifest::load(&args.manifest)?;
    // The files this run reads, which no output may replace: refused before the run.
    let mut inputs: Vec<&Path> = vec![args.manifest.as_path(), args.input.as_path()];
    inputs.extend(manifest.members.iter().map(|m| m.file.as_path()));
    inputs.extend(manifest.blender.as_deref());
    let mut outputs: Vec<&Path> = vec![args.output.as_path()];
    outputs.extend(args.members_output.as_deref());
    outputs.extend(args.uncertainty_output.as_deref());
    outputs.extend(args.variance_output.as_deref());
    check_outputs(&outputs, &inputs)?;
    if args.timeout_ms == Some(0) {
        return Err(crate::flag_error(
            "--timeout-ms",
            "must be at least 1 (leave it out for no deadline)",
        ));
    }
    let x = read_matrix(&args.input)?;
    let precision = args.precision.parse::<Precision>()?;
    let session_options = SessionOptions::default()
        .precision(precision)
        .faults(fault_plan(&args.fault)?);
    let graph = manifest.graph(device.as_ref())?;
    if args.uncertainty_output.is_some() {
        // The entropies read each output as a distribution over the classes; another
        // output (a regression's) gives numbers without that meaning.
        let not_softmax: Vec<&str> = graph
            .members()
            .iter()
            .filter(|m| {
                m.model().layers().last().map(|l| l.activation()) != Some(Activation::Softmax)
            })
            .map(|m| m.name())
            .collect();
        if !not_softmax.is_empty() {
            eprintln!(
                "wgpu-ensemble: --uncertainty-output reads outputs as class probabilities, and these members do not end in a softmax: {} (their entropies are not meaningful; --variance-output is)",
                not_softmax.join(", ")
            );
        }
    }
    let session = Session::with_options(graph, session_options)?;
    if precision != Precision::F32 {
        let on_cpu = session.devices().any(|d| matches!(d, ExecutionDevice::Cpu));
        if on_cpu {
            eprintln!(
                "wgpu-ensemble: --precision {} applies to the members on GPUs; those on the CPU run in f32",
                args.precision
            );
        }
    }
    let mut options = RunOptions::default()
        .member_outputs(args.members_output.is_some())
        .uncertainty(args.uncertainty_output.is_some() || args.variance_output.is_some());
    if let Some(ms) = args.timeout_ms {
        options = options.timeout(Duration::from_millis(ms));
    }
    if let Some(k) = args.quorum {
        options = options.quorum(QuorumPolicy::Quorum(k));
    }
    // The session checks the input's width; the error names the file.
    let run = session.run(&x, &options).map_err(|e| match e {
        wgpu_ensemble::Error::FeatureWidth { expected, got } => crate::flag_error(
            "--input",
            format!(
                "{}: {got} features per row; the manifest's members take {expected}",
                args.input.display()
            ),
        ),
        e => e.into(),
    })?;
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
    if run.stacked == Some(false) {
        eprintln!(
            "wgpu-ensemble: the stack's blender was not applied (members missing): the aggregate is the mean of the members that finished"
        );
    }

    // Every output is complete in memory before any file is written; all are written
    // under temporary names (which a termination signal removes) before any is
    // renamed into place.
    let mut files = vec![(args.output.to_path_buf(), run.aggregate.clone())];
    if let Some(path) = &args.members_output {
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
    if let Some(u) = &run.uncertainty {
        if let Some(path) = &args.uncertainty_output {
            files.push((path.to_path_buf(), u.summary()));
        }
        if let Some(path) = &args.variance_output {
            files.push((path.to_path_buf(), u.variance.clone()));
        }
    }
    let staged = stage_tensors(&files, &inputs)?;
    pause_before_rename();
    staged.commit()?;

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

/// For the tests of signal handling only, not an interface: this many milliseconds of
/// sleep between writing the outputs under their temporary names and renaming them
/// into place, so that a test can send a signal while they are partial.
const PAUSE_BEFORE_RENAME: &str = "WGPU_ENSEMBLE_TEST_PAUSE_BEFORE_RENAME_MS";

fn pause_before_rename() {
    if let Some(ms) = std::env::var(PAUSE_BEFORE_RENAME)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}
