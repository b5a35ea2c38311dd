//! The `wgpu-ensemble` command-line tool: list devices, run an ensemble manifest on a
//! `.npy` input, time the standard workloads. One module per subcommand.

/// `println!` for the command's output on stdout, without its panic when stdout is
/// closed ([`stdout_line`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

mod bench;
mod devices;
mod predict;
#[cfg(feature = "serve")]
mod serve;
mod train;
mod train_blender;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Predict(predict::PredictArgs),
    /// Time a standard workload: gemm (an N x N layer at batch N), E1 (4 x 784-512-512-10) or E2 (8 x 1024-4096-4096-1024).
    Bench(bench::BenchArgs),
    /// Serve a model repository over HTTP: KServe v2 and TensorFlow Serving REST, versions swapped while serving, dynamic batching, replicas, Prometheus metrics at /metrics.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// Train a study: many trials of a study file's search space, one per device at a time, records in OUT/trials.jsonl, the best as an ensemble in OUT/ensemble.toml; or one configuration (--trial) for an orchestrator.
    Train(train::TrainArgs),
    /// Fit a stack's blender: run a manifest's members on held-out rows (--x, --y labels), fit a multinomial logistic regression on their outputs side by side (scikit-learn's LogisticRegression(C) objective) and save it as --out for `[aggregate] kind = "stack"`.
    TrainBlender(train_blender::TrainBlenderArgs),
}

fn main() {
    let code = run();
    finish(code)
}

/// Ends the process with `code` once stdout and stderr are flushed, without the exit
/// handlers of the shared libraries. A member that missed the run's deadline (or the
/// quorum's) may still be at work on a thread of its own, inside a driver — lavapipe
/// compiling a shader in LLVM — and a driver's exit handler (libEGL's) tears down what
/// that thread uses: `predict --timeout-ms` crashed with SIGSEGV or SIGABRT after
/// reporting its error, in about one run in seven with the shader cache off. Every
/// output was written, synced and put in place before this point.
fn finish(code: ExitCode) -> ! {
    use std::io::Write;
    // A late member's thread may be writing a file (the autotune cache): its partial
    // file is removed and no rename starts, as on a signal.
    let _stopped = wgpu_ensemble::io::stop_writes();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let code = if code == ExitCode::SUCCESS { 0 } else { 1 };
    #[cfg(unix)]
    signal_hook::low_level::exit(code);
    #[cfg(not(unix))]
    std::process::exit(code);
}

/// Writes `line` and a newline to stdout. When the reader has gone (`| head`), the
/// command ends at once with status 0, as what it had to say is no longer wanted
/// (`println!` panicked); another error writing stdout (a full disk) ends it with
/// status 1, saying why on stderr.
pub(crate) fn stdout_line(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        drop(out);
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            finish(ExitCode::SUCCESS);
        }
        let _ = writeln!(
            std::io::stderr(),
            "wgpu-ensemble: error: writing stdout: {e}"
        );
        finish(ExitCode::FAILURE);
    }
}

fn run() -> ExitCode {
    let cli = Cli::parse();
    // The server handles the signals itself: it stops gracefully.
    #[cfg(feature = "serve")]
    let server = matches!(cli.command, Command::Serve(_));
    #[cfg(not(feature = "serve"))]
    let server = false;
    let training = matches!(cli.command, Command::Train(_));
    #[cfg(unix)]
    if training {
        // The study stops after the running epochs, keeping every finished trial.
        if let Err(e) = train::stop_on_signals() {
            eprintln!("wgpu-ensemble: error: cannot handle SIGINT, SIGTERM and SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    }
    #[cfg(unix)]
    if !server && !training {
        if let Err(e) = stop_on_signals() {
            eprintln!("wgpu-ensemble: error: cannot handle SIGINT, SIGTERM and SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Devices => {
            devices::devices();
            Ok(())
        }
        Command::Predict(args) => predict::predict(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Train(args) => train::train(&args),
        Command::TrainBlender(args) => train_blender::train_blender(&args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wgpu-ensemble: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP to be handled — those not ignored when the process
/// started (SIGHUP under `nohup` stays ignored) — or `None` when every one was.
#[cfg(unix)]
pub(crate) fn handled_signals() -> std::io::Result<Option<signal_hook::iterator::Signals>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let ignored = ignored_at_start();
    let handled: Vec<i32> = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|&s| ignored & (1 << (s - 1)) == 0)
        .collect();
    if handled.is_empty() {
        return Ok(None);
    }
    signal_hook::iterator::Signals::new(&handled).map(Some)
}

/// Handles SIGINT, SIGTERM and SIGHUP on a thread of their own: the first one stops
/// the output writes, removing every temporary file being written
/// ([`wgpu_ensemble::io::stop_writes`]), and exits with 128 + the signal's number
/// (130, 143, 129), without waiting for the devices. A signal that was ignored when
/// the process started (SIGHUP under `nohup`) stays ignored.
#[cfg(unix)]
fn stop_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::io::Write;
    let Some(mut signals) = handled_signals()? else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _stopped = wgpu_ensemble::io::stop_writes();
                let name = match signal {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                // Not `eprintln!`, which panics when stderr is gone (a closed terminal).
                let _ = writeln!(
                    std::io::stderr(),
                    "wgpu-ensemble: stopped by {name}; partial outputs removed"
                );
                // No destructors or exit handlers: a device may be busy, and the
                // guard must stay held until the process is gone.
                signal_hook::low_level::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// The mask of the signals ignored when the process started (bit `n - 1` for signal
/// `n`), from Linux's `/proc/self/status`; none where it cannot be read.
#[cfg(unix)]
fn ignored_at_start() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// What a subcommand fails with: the library's error, or a flag that cannot be used
/// as given (named, with why).
enum CliError {
    Lib(wgpu_ensemble::Error),
    Usage { flag: &'static str, message: String },
}

impl From<wgpu_ensemble::Error> for CliError {
    fn from(e: wgpu_ensemble::Error) -> Self {
        CliError::Lib(e)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Lib(e) => e.fmt(f),
            CliError::Usage { flag, message } => write!(f, "{flag}: {message}"),
        }
    }
}

type CliResult = Result<(), CliError>;

/// A flag that cannot be used as given.
fn flag_error(flag: &'static str, message: impl Into<String>) -> CliError {
    CliError::Usage {
        flag,
        message: message.into(),
    }
}
