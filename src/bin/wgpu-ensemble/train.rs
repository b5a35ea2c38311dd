//! `wgpu-ensemble train`: run a study (many trials, one per device at a time) and
//! export the best as an ensemble; or, with `--trial`, train one configuration and
//! print its record (for an orchestrator such as Optuna).

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use wgpu_ensemble::train::study::{Devices, Study, StudyEvent, TrialRecord, TrialStatus};
use wgpu_ensemble::Placement;

#[derive(clap::Args)]
pub(crate) struct TrainArgs {
    /// The study file (TOML): [data], [search], [space].
    #[arg(long)]
    study: PathBuf,
    /// The output folder: trials.jsonl, <trial>.safetensors, ensemble.toml. Running the same study on it again resumes.
    #[arg(long)]
    out: PathBuf,
    /// Where trials run, one at a time on each: auto (every usable adapter plus the CPU), cpu, or a list such as adapter:0,adapter:0/queue:1,cpu.
    #[arg(long, default_value = "auto")]
    devices: String,
    /// One JSON line per epoch and per finished trial on stdout.
    #[arg(long)]
    json: bool,
    /// Train only this configuration (a JSON object of parameters) and print its record as JSON.
    #[arg(long, value_name = "PARAMS_JSON")]
    trial: Option<PathBuf>,
}

/// Set by the first SIGINT / SIGTERM / SIGHUP: the study stops after the running
/// epochs.
static STOP: AtomicBool = AtomicBool::new(false);

/// The train command's signals: the first one asks the study to stop after the
/// running epochs (every finished trial is kept); a second one exits at once.
#[cfg(unix)]
pub(crate) fn stop_on_signals() -> std::io::Result<()> {
    // A signal ignored when the process started (SIGHUP under `nohup`) stays ignored.
    let Some(mut signals) = crate::handled_signals()? else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            for signal in signals.forever() {
                if STOP.swap(true, Ordering::SeqCst) {
                    let _stopped = wgpu_ensemble::io::stop_writes();
                    let _ = writeln!(
                        std::io::stderr(),
                        "wgpu-ensemble: stopped by a second signal; finished trials are kept"
                    );
                    signal_hook::low_level::exit(128 + signal);
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "wgpu-ensemble: stopping after the running epochs (a second signal stops at once)"
                );
            }
        })?;
    Ok(())
}

fn out_line(value: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
    let _ = stdout.flush();
}

fn metric_text(record: &TrialRecord) -> String {
    match (record.accuracy, record.rmse) {
        (Some(a), _) => format!("accuracy {a:.4}"),
        (_, Some(e)) => format!("RMSE {e:.5}"),
        _ => String::new(),
    }
}

/// The progress display: a bar per running trial and one for the study (on a
/// terminal), a line per ended trial (elsewhere), JSON lines with `--json`.
struct Display {
    bars: MultiProgress,
    running: Vec<(String, ProgressBar)>,
    total: ProgressBar,
    json: bool,
    terminal: bool,
    classification: bool,
}

impl Display {
    fn new(trials: usize, json: bool, classification: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bars = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let total = bars.add(ProgressBar::new(trials as u64));
        if let Ok(style) = ProgressStyle::with_template("trials {pos}/{len} [{elapsed}] {msg}") {
            total.set_style(style);
        }
        Self {
            bars,
            running: Vec::new(),
            total,
            json,
            terminal,
            classification,
        }
    }

    fn println(&self, line: &str) {
        if self.terminal {
            let _ = self.bars.println(line);
        } else {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }

    fn event(&mut self, event: &StudyEvent) {
        match event {
            StudyEvent::Skipped(r) => {
                self.total.inc(1);
                self.println(&format!(
                    "{}: recorded earlier ({:?}), not trained again",
                    r.name, r.status
                ));
            }
            StudyEvent::Started {
                trial,
                device,
                epochs,
            } => {
                let bar = self
                    .bars
                    .insert_before(&self.total, ProgressBar::new(*epochs as u64));
                if let Ok(style) =
                    ProgressStyle::with_template("{prefix} {bar:20} {pos}/{len} epochs {msg}")
                {
                    bar.set_style(style);
                }
                bar.set_prefix(format!("{trial} [{device}]"));
                self.running.push((trial.clone(), bar));
            }
            StudyEvent::Epoch {
                trial,
                device,
                epochs,
                report,
            } => {
                let metric = if self.classification {
                    format!("accuracy {:.4}", report.validation.metric)
                } else {
                    format!("RMSE {:.5}", report.validation.metric)
                };
                if let Some((_, bar)) = self.running.iter().find(|(t, _)| t == trial) {
                    bar.set_position(report.epoch as u64);
                    bar.set_message(format!(
                        "loss {:.4} val loss {:.4} {metric}",
                        report.train_loss, report.validation.loss
                    ));
                }
                if self.json {
                    let mut line = json!({
                        "event": "epoch",
                        "trial": trial,
                        "device": device,
                        "epoch": report.epoch,
                        "epochs": epochs,
                        "learning_rate": report.learning_rate,
                        "train_loss": report.train_loss,
                        "validation_loss": report.validation.loss,
                        "seconds": report.seconds,
                    });
                    let metric = if self.classification {
                        "accuracy"
                    } else {
                        "rmse"
                    };
                    if let Some(map) = line.as_object_mut() {
                        map.insert(metric.to_string(), json!(report.validation.metric));
                    }
                    out_line(&line);
                }
            }
            StudyEvent::Finished(record) => {
                if let Some(i) = self.running.iter().position(|(t, _)| t == &record.name) {
                    let (_, bar) = self.running.remove(i);
                    bar.finish_and_clear();
                    self.bars.remove(&bar);
                }
                self.total.inc(1);
                let line = match record.status {
                    TrialStatus::Finished => format!(
                        "{} [{}]: {} epochs, best {:?}, validation loss {:.4}, {}, {:.1} s",
                        record.name,
                        record.device,
                        record.epochs_run,
                        record.best_epoch.unwrap_or(0),
                        record.validation_loss.unwrap_or(f64::NAN),
                        metric_text(record),
                        record.seconds
                    ),
                    _ => format!(
                        "{} [{}]: failed: {}",
                        record.name,
                        record.device,
                        record.error.as_deref().unwrap_or("")
                    ),
                };
                self.println(&line);
                if self.json {
                    let mut value = serde_json::to_value(record).unwrap_or_default();
                    if let Some(map) = value.as_object_mut() {
                        map.insert("event".to_string(), json!("trial"));
                    }
                    out_line(&value);
                }
            }
            StudyEvent::DeviceDropped { device, error } => {
                self.println(&format!(
                    "device {device} cannot train and takes no more trials: {error}"
                ));
            }
            _ => {}
        }
    }

    fn finish(&self) {
        for (_, bar) in &self.running {
            bar.finish_and_clear();
        }
        self.total.finish_and_clear();
    }
}

pub(crate) fn train(args: &TrainArgs) -> crate::CliResult {
    let devices: Devices = args.devices.parse()?;
    // An adapter that does not exist is refused before any trial starts (a trial
    // would find it only on its device's first job).
    let names_adapters = |list: &[Placement]| {
        list.iter()
            .any(|p| matches!(p, Placement::Adapter(_) | Placement::Queue { .. }))
    };
    if let Devices::List(list) = devices.clone() {
        let found = if names_adapters(&list) {
            wgpu_ensemble::adapters()
        } else {
            Vec::new()
        };
        for p in &list {
            let index = match p {
                Placement::Adapter(i) | Placement::Queue { adapter: i, .. } => *i,
                _ => continue,
            };
            if index >= found.len() {
                let names: Vec<String> = found.iter().map(ToString::to_string).collect();
                return Err(crate::flag_error(
                    "--devices",
                    format!(
                        "adapter {index} does not exist; adapters found: {}",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join("; ")
                        }
                    ),
                ));
            }
        }
    }
    let study = Study::from_toml(&args.study)?;
    let classification = matches!(study.task(), wgpu_ensemble::train::Task::Classification);
    let progress = |display: &mut Display, event: &StudyEvent| {
        display.event(event);
        if STOP.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    if let Some(params_path) = &args.trial {
        let params = study.trial_params_file(params_path)?;
        let placement = match devices {
            Devices::List(list) => list.into_iter().next().unwrap_or(Placement::Cpu),
            _ => Placement::Auto,
        };
        let mut display = Display::new(1, args.json, classification);
        let record = study.run_trial(&args.out, &params, &placement, &mut |e| {
            // The record is printed once, below.
            if matches!(e, StudyEvent::Finished(_)) {
                return ControlFlow::Continue(());
            }
            progress(&mut display, e)
        })?;
        display.finish();
        let mut value = serde_json::to_value(&record).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("event".to_string(), json!("trial"));
        }
        out_line(&value);
        return Ok(());
    }
    let mut display = Display::new(study.trials(), args.json, classification);
    let started = std::time::Instant::now();
    let result = study.run(&args.out, &devices, &mut |e| progress(&mut display, e));
    display.finish();
    let result = result?;
    let failed = result
        .trials
        .iter()
        .filter(|r| r.status != TrialStatus::Finished)
        .count();
    let best = result.best();
    let _ = writeln!(
        std::io::stderr(),
        "wgpu-ensemble: {} trials ({failed} failed) in {:.1} s; ensemble of the {} best in {}{}",
        result.trials.len(),
        started.elapsed().as_secs_f64(),
        best.len(),
        args.out.join("ensemble.toml").display(),
        best.first()
            .map(|r| format!(
                "; best {}: validation loss {:.4}, {}",
                r.name,
                r.validation_loss.unwrap_or(f64::NAN),
                metric_text(r)
            ))
            .unwrap_or_default()
    );
    if args.json {
        out_line(&json!({
            "event": "study",
            "trials": result.trials.len(),
            "failed": failed,
            "ensemble": args.out.join("ensemble.toml"),
            "best": best.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    Ok(())
}
