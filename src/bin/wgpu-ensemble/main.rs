//! The `wgpu-ensemble` command-line tool: list devices, run an ensemble manifest on a
//! `.npy` input, time the standard workloads. One module per subcommand.

mod bench;
mod devices;
mod predict;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => {
            devices::devices();
            Ok(())
        }
        Command::Predict(args) => predict::predict(&args),
        Command::Bench(args) => bench::bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wgpu-ensemble: error: {e}");
            ExitCode::FAILURE
        }
    }
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
