//! A soak run: one session for many runs on every placement this machine has (the
//! CPU, each usable adapter, and a second queue on the first), batches of 1 to 64 rows
//! mixed, faults injected now and then (a member failing, a device lost and
//! recreated). Every finished member's output is compared with the same member run
//! alone on the CPU; the process's resident memory, open files and threads are
//! reported after the warm-up and at the end. Exits non-zero when an answer differs,
//! when memory grew by more than the allowed share, or when files or threads grew.
//!
//!     cargo run --release --example soak -- [RUNS] [ALLOWED_GROWTH_PERCENT] [LOSSES]
//!
//! (defaults: 10000 runs, 5 %, 3; the first tenth of the runs is the warm-up, during
//! which every GPU device is lost and recreated 20 times; LOSSES more follow, spread
//! over the rest). A figure recorded with it belongs under `benches/results/<date>/`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use wgpu_ensemble::{
    probe_adapters, Activation, Fault, FaultPlan, Graph, MemberStatus, Model, Placement,
    QuorumPolicy, RunOptions, Session, SessionOptions, Tensor,
};

/// Widths of every member: small, so that a run takes milliseconds on lavapipe.
const WIDTHS: [usize; 4] = [32, 64, 48, 10];
/// How often every GPU device is lost and recreated during the warm-up. Recreating a
/// lavapipe device raises the resident set for the first ten to twenty times and then
/// no more (240 recreations of a one-member lavapipe session: 89.7 MB at the start,
/// 102.2 MB after 20, 103.3 MB after 240), so the growth measured after the warm-up
/// is the growth that continues.
const WARMUP_LOSSES: u64 = 20;
/// Batch sizes cycled through (every size from 1 to 64 over 64 runs, in a scrambled
/// order so that growing and shrinking batches alternate).
const BATCHES: usize = 64;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let runs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let allowed: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let losses: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    match soak(runs.max(20), allowed, losses) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The process's resident set (VmRSS) and its peak (VmHWM), in KiB, and how many files
/// it has open and threads it runs (Linux; zeros elsewhere).
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    rss_kib: u64,
    peak_kib: u64,
    files: usize,
    threads: usize,
}

fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
    Usage {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
        files: count("/proc/self/fd"),
        threads: count("/proc/self/task"),
    }
}

fn soak(runs: u64, allowed: f64, losses: u64) -> wgpu_ensemble::Result<bool> {
    use Activation::*;
    let mut places: Vec<(String, Placement)> = vec![("cpu".into(), Placement::Cpu)];
    for probe in probe_adapters() {
        if probe.usable.is_ok() {
            let i = probe.info.index;
            places.push((format!("adapter{i}"), Placement::Adapter(i)));
        }
    }
    if let Some(first) = places.iter().find_map(|(_, p)| match p {
        Placement::Adapter(i) => Some(*i),
        _ => None,
    }) {
        places.push((
            format!("adapter{first}-queue1"),
            Placement::Queue {
                adapter: first,
                slot: 1,
            },
        ));
    }
    let acts = [Relu, Tanh, Softmax];
    let models: Vec<Model> = (0..places.len())
        .map(|i| Model::random(&WIDTHS, &acts, 100 + i as u64))
        .collect::<wgpu_ensemble::Result<_>>()?;

    // Faults now and then: a member failing, and every device but the CPU lost (and
    // recreated on the next run).
    let mut plan = FaultPlan::new();
    for (m, (name, place)) in places.iter().enumerate() {
        let mut run = 997 + 131 * m as u64;
        while run + 10 < runs {
            plan = plan.on_run(name.clone(), run, Fault::Fail);
            run += 1009;
        }
        if !matches!(place, Placement::Cpu) {
            // WARMUP_LOSSES times during the warm-up (the resident set settles after
            // some recreations: the allocator's and the driver's high-water marks), then
            // `losses` more times: memory must not grow with them.
            let warmup = runs / 10;
            let during = (1..=WARMUP_LOSSES).map(|k| k * warmup / (WARMUP_LOSSES + 1));
            let after = (1..=losses).map(|k| warmup + k * (runs - warmup) / (losses + 1));
            for at in during.chain(after) {
                plan = plan.on_run(name.clone(), at + m as u64, Fault::LoseDevice);
            }
        }
    }
    let mut builder = Graph::builder(WIDTHS[0]);
    for ((name, place), model) in places.iter().zip(&models) {
        builder = builder.member(name.clone(), model.clone(), place.clone());
    }
    let session = Session::with_options(builder.build()?, SessionOptions::default().faults(plan))?;
    println!(
        "soak: {runs} runs of {} members on {}",
        places.len(),
        places
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // The inputs, one per batch size, and every member's answer to each on the CPU.
    let inputs: Vec<Tensor> = (1..=BATCHES)
        .map(|rows| {
            let values: Vec<f32> = (0..rows * WIDTHS[0])
                .map(|i| ((i * 7919 + rows * 31) % 2000) as f32 / 500.0 - 2.0)
                .collect();
            Tensor::matrix(rows, WIDTHS[0], values)
        })
        .collect::<wgpu_ensemble::Result<_>>()?;
    let mut expected: Vec<Vec<Tensor>> = Vec::new();
    for model in &models {
        let alone = Session::new(
            Graph::builder(WIDTHS[0])
                .member("reference", model.clone(), Placement::Cpu)
                .build()?,
        )?;
        let mut answers = Vec::new();
        for x in &inputs {
            answers.push(alone.run(x, &RunOptions::default())?.aggregate);
        }
        expected.push(answers);
    }

    let options = RunOptions::default()
        .member_outputs(true)
        .quorum(QuorumPolicy::Quorum(1))
        .timeout(Duration::from_secs(60));
    let warmup = runs / 10;
    let mut at_warmup = Usage::default();
    let (mut wrong, mut failed, mut late) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for run in 0..runs {
        if run == warmup {
            at_warmup = usage();
        }
        let size = (run as usize * 37) % BATCHES;
        let out = session.run(&inputs[size], &options)?;
        for (m, report) in out.members.iter().enumerate() {
            match (&report.status, &report.output) {
                (MemberStatus::Finished, Some(y)) => {
                    let want = expected[m][size].as_slice();
                    let differs = y.as_slice().iter().zip(want).any(|(&g, &w)| {
                        let d = (f64::from(g) - f64::from(w)).abs();
                        d > 1e-5 && d > 1e-4 * f64::from(w).abs().max(f64::from(g).abs())
                    });
                    if differs {
                        wrong += 1;
                        eprintln!(
                            "soak: run {run}: {} differs at batch {}",
                            report.name,
                            size + 1
                        );
                    }
                }
                (MemberStatus::Failed(_), _) => failed += 1,
                _ => late += 1,
            }
        }
    }
    let end = usage();
    let growth = if at_warmup.rss_kib > 0 {
        (end.rss_kib as f64 / at_warmup.rss_kib as f64 - 1.0) * 100.0
    } else {
        0.0
    };
    println!(
        "soak: {runs} runs in {:.1} s; answers wrong {wrong}, members failed {failed} (injected), late {late}",
        started.elapsed().as_secs_f64()
    );
    println!(
        "soak: after {warmup} runs: rss {} KiB, peak {} KiB, {} files, {} threads",
        at_warmup.rss_kib, at_warmup.peak_kib, at_warmup.files, at_warmup.threads
    );
    println!(
        "soak: after {runs} runs: rss {} KiB, peak {} KiB, {} files, {} threads; rss {growth:+.1} % (allowed {allowed} %)",
        end.rss_kib, end.peak_kib, end.files, end.threads
    );
    let ok = wrong == 0
        && late == 0
        && growth <= allowed
        && end.files <= at_warmup.files
        && end.threads <= at_warmup.threads;
    if !ok {
        eprintln!("soak: FAILED");
    }
    Ok(ok)
}
