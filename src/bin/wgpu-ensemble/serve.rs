//! `wgpu-ensemble serve`: the inference server on a model repository.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use wgpu_ensemble::serve::{BatchConfig, Replicas, ServeConfig, Server};
use wgpu_ensemble::Precision;

use crate::{flag_error, CliResult};

#[derive(Args)]
pub struct ServeArgs {
    /// The model repository: <model>/<version>/ensemble.toml, weight files beside it.
    #[arg(long)]
    model_repository: PathBuf,
    /// The address to listen on: an IP address, or a host name (its first IPv4 address if it has one, e.g. localhost: 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0 picks a free one; the address is printed once the server is ready).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// How often the repository is scanned for new and removed versions.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    /// The most rows one batch run holds.
    #[arg(long, default_value_t = 64)]
    max_batch_size: usize,
    /// How long the first request of a batch waits for others to join it.
    #[arg(long, default_value_t = 500)]
    max_queue_delay_us: u64,
    /// The most requests waiting per model version; one more is answered 503.
    #[arg(long, default_value_t = 1024)]
    queue_capacity: usize,
    /// manifest: one copy of each ensemble, members where the manifest places them;
    /// per-device: a whole copy on every usable adapter (the CPU when none is).
    #[arg(long, default_value = "manifest")]
    replicas: String,
    /// f32, f16 or f16-coop.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// The largest request body taken, in bytes (a larger one is answered 413).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// On SIGTERM, how long to wait for the connections open: every request accepted is
    /// answered; a client still sending one when the time is up is disconnected.
    #[arg(long, default_value_t = 20)]
    shutdown_timeout_s: u64,
    /// Seconds a connection may take to send a request's headers (an idle keep-alive connection is closed after them too); 0 waits for ever.
    #[arg(long, default_value_t = 30)]
    header_timeout_s: u64,
    /// Whether /v2/health/ready also waits for every model: not ready while a model serves no version because all of its versions failed to load (or its config.toml never parsed). false: ready once the versions found at start are loaded.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    strict_readiness: bool,
}

pub fn serve(args: &ServeArgs) -> CliResult {
    let host: IpAddr = match args.host.parse() {
        Ok(ip) => ip,
        Err(_) => {
            use std::net::ToSocketAddrs;
            let resolved = (args.host.as_str(), args.port)
                .to_socket_addrs()
                .map_err(|e| {
                    flag_error(
                        "--host",
                        format!("'{}' is neither an IP address nor a host name this machine resolves: {e}", args.host),
                    )
                })?;
            // IPv4 first: `localhost` often resolves to ::1 before 127.0.0.1, and a
            // container without IPv6 cannot bind ::1.
            let mut ips: Vec<IpAddr> = resolved.map(|a| a.ip()).collect();
            ips.sort_by_key(|ip| !ip.is_ipv4());
            ips.first().copied().ok_or_else(|| {
                flag_error("--host", format!("'{}' resolves to no address", args.host))
            })?
        }
    };
    if args.max_batch_size == 0 {
        return Err(flag_error("--max-batch-size", "must be at least 1"));
    }
    if args.max_queue_delay_us > 10_000_000 {
        return Err(flag_error(
            "--max-queue-delay-us",
            format!(
                "{} µs: at most 10 000 000 (10 s), which already holds every request that long",
                args.max_queue_delay_us
            ),
        ));
    }
    if args.queue_capacity == 0 {
        return Err(flag_error("--queue-capacity", "must be at least 1"));
    }
    if args.poll_interval_ms == 0 {
        return Err(flag_error("--poll-interval-ms", "must be at least 1"));
    }
    let replicas: Replicas = args.replicas.parse()?;
    let precision: Precision = args.precision.parse()?;
    let config = ServeConfig::new(&args.model_repository)
        .addr(SocketAddr::new(host, args.port))
        .poll_interval(Duration::from_millis(args.poll_interval_ms))
        .batch(BatchConfig {
            max_batch_size: args.max_batch_size,
            max_queue_delay: Duration::from_micros(args.max_queue_delay_us),
            queue_capacity: args.queue_capacity,
        })
        .replicas(replicas)
        .precision(precision)
        .max_body_bytes(args.max_body_bytes)
        .shutdown_timeout(Duration::from_secs(args.shutdown_timeout_s))
        .strict_readiness(args.strict_readiness)
        .header_read_timeout(
            (args.header_timeout_s > 0).then(|| Duration::from_secs(args.header_timeout_s)),
        );
    // The server's events (versions loaded, failed, unloaded) on stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
    let stop = stop_signal()?;
    let server = Server::start_loading(config)?;
    // A signal while the versions found at start load stops the server at once (their
    // load is waited for at most --shutdown-timeout-s).
    while !server.wait_ready(Duration::from_millis(50)) {
        if stop.try_recv().is_ok() {
            eprintln!("wgpu-ensemble: stopping while loading");
            server.shutdown();
            return Ok(());
        }
    }
    eprintln!("listening on http://{}", server.addr());
    // SIGTERM / SIGINT: stop accepting, answer what was accepted, unload, exit 0.
    let _ = stop.recv();
    eprintln!("wgpu-ensemble: stopping: answering the requests accepted, then unloading");
    server.shutdown();
    Ok(())
}

/// A channel that receives once SIGINT, SIGTERM or SIGHUP arrives.
fn stop_signal() -> Result<crossbeam_channel::Receiver<()>, crate::CliError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| {
                flag_error(
                    "signals",
                    format!("cannot handle SIGINT, SIGTERM and SIGHUP: {e}"),
                )
            })?;
        std::thread::Builder::new()
            .name("signals".to_string())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| flag_error("signals", e.to_string()))?;
    }
    #[cfg(not(unix))]
    std::mem::forget(tx);
    Ok(rx)
}
