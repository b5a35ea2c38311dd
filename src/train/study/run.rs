//! Running a study: the trials go to one worker thread per device slot, which take
//! them from a shared queue; the caller's thread records each trial as it ends
//! (`trials.jsonl`), reports progress, and at the end writes the ensemble of the best.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::record::{append_record, now, read_records, TrialRecord, TrialStatus};
use super::space::TrialParams;
use super::Study;
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::files::{check_outputs, write_atomically};
use crate::graph::Graph;
use crate::io::{load_model, save_model, LoadOptions};
use crate::model::Model;
use crate::placement::Placement;
use crate::train::{train_member, Data, EpochReport, Hyper, Task, TrainSet};

/// The records file in a study's output folder.
pub const RECORDS: &str = "trials.jsonl";
/// The ensemble manifest in a study's output folder.
pub const ENSEMBLE: &str = "ensemble.toml";

/// The devices a study's trials run on, one trial at a time on each.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Devices {
    /// Every usable GPU (discrete, integrated or virtual, not llvmpipe) plus the CPU
    /// (a software adapter runs on the same cores as the CPU engine, many times
    /// slower: list it to use it).
    #[default]
    Auto,
    /// These placements, one slot each (a placement listed twice runs two trials at
    /// once there).
    List(Vec<Placement>),
}

impl std::str::FromStr for Devices {
    type Err = Error;

    /// `auto`, or a comma-separated list of `cpu`, `adapter:N`, `adapter:N/queue:K`
    /// (the command line's `--devices`).
    fn from_str(spec: &str) -> Result<Self> {
        if spec.trim().eq_ignore_ascii_case("auto") {
            return Ok(Devices::Auto);
        }
        let list = spec
            .split(',')
            .map(|s| match s.trim().parse::<Placement>()? {
                Placement::Auto => Err(Error::DeviceSpec {
                    spec: crate::error::excerpt(spec),
                }),
                p => Ok(p),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Devices::List(list))
    }
}

impl Devices {
    /// The placements, one per slot: for [`Devices::Auto`] every hardware adapter a
    /// device can be created on, then the CPU.
    pub fn placements(&self) -> Vec<Placement> {
        match self {
            Devices::List(list) => list.clone(),
            Devices::Auto => crate::gpu::probe_adapters()
                .into_iter()
                .filter(|p| p.usable.is_ok() && crate::train::engine::is_hardware(&p.info))
                .map(|p| Placement::Adapter(p.info.index))
                .chain(std::iter::once(Placement::Cpu))
                .collect(),
        }
    }
}

/// A placement as the command line writes it.
pub(crate) fn spec(p: &Placement) -> String {
    match p {
        Placement::Auto => "auto".to_string(),
        Placement::Cpu => "cpu".to_string(),
        Placement::Adapter(i) => format!("adapter:{i}"),
        Placement::Queue { adapter, slot } => format!("adapter:{adapter}/queue:{slot}"),
        Placement::Device(d) => d.label.clone(),
    }
}

/// What a running study reports to its progress callback, on the caller's thread.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StudyEvent {
    /// A trial recorded by an earlier run of the same study, not trained again.
    Skipped(TrialRecord),
    /// A trial started on a device slot.
    Started {
        /// The trial's name.
        trial: String,
        /// The slot's placement (`cpu`, `adapter:0`).
        device: String,
        /// Its epochs at most.
        epochs: usize,
    },
    /// A trial ran an epoch.
    Epoch {
        /// The trial's name.
        trial: String,
        /// The slot's placement.
        device: String,
        /// Its epochs at most.
        epochs: usize,
        /// The epoch's report.
        report: EpochReport,
    },
    /// A trial ended (finished or failed) and is recorded.
    Finished(TrialRecord),
    /// A device slot cannot train and takes no more trials (its trial goes back to
    /// the queue).
    DeviceDropped {
        /// The slot's placement.
        device: String,
        /// Why.
        error: String,
    },
}

/// A study's trials, and the ensemble of the best of them in memory.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StudyResult {
    /// Every trial's record, in the order of their indices (resumed trials included).
    pub trials: Vec<TrialRecord>,
    /// The output folder.
    pub out: PathBuf,
    /// The kept trials' names and models, best first.
    best: Vec<(String, Model)>,
    aggregate: Aggregate,
}

impl StudyResult {
    /// The kept trials' records, best (lowest validation loss) first.
    pub fn best(&self) -> Vec<&TrialRecord> {
        self.best
            .iter()
            .filter_map(|(name, _)| self.trials.iter().find(|r| &r.name == name))
            .collect()
    }

    /// The kept trials' models, best first, with their names.
    pub fn models(&self) -> &[(String, Model)] {
        &self.best
    }

    /// The ensemble of the kept trials as a graph (every member on `auto`, the study's
    /// aggregate), built in memory.
    pub fn graph(&self) -> Result<Graph> {
        let Some((_, first)) = self.best.first() else {
            return Err(Error::NoMembers);
        };
        let mut builder = Graph::builder(first.in_features());
        for (name, model) in &self.best {
            builder = builder.member(name.clone(), model.clone(), Placement::Auto);
        }
        builder.aggregate(self.aggregate.clone()).build()
    }

    /// The ensemble manifest's text (`OUT/ensemble.toml`): the kept trials, best
    /// first, each `OUT/<trial>.safetensors` on device `auto`.
    pub fn manifest(&self) -> String {
        let mut text = format!(
            "# Made by `wgpu-ensemble train`: the {} best of {} trials by validation loss.\n\n[aggregate]\nkind = \"{}\"\n",
            self.best.len(),
            self.trials.len(),
            self.aggregate.name()
        );
        for r in self.best() {
            let p = &r.params;
            text.push_str(&format!(
                "\n[[member]]\nname = \"{}\"\nfile = \"{}.safetensors\"\ndevice = \"auto\"\n# validation loss {:.6}{}; hidden {:?}, {}, {}, learning rate {:.3e}, batch {}, epochs {} of {}\n",
                r.name,
                r.name,
                r.validation_loss.unwrap_or(f64::NAN),
                match (r.accuracy, r.rmse) {
                    (Some(a), _) => format!(", accuracy {a:.4}"),
                    (_, Some(e)) => format!(", RMSE {e:.6}"),
                    _ => String::new(),
                },
                p.hidden,
                p.activation,
                p.optimizer,
                p.learning_rate,
                p.batch_size,
                r.epochs_run,
                p.epochs
            ));
        }
        text
    }
}

/// One trial to run.
struct Job {
    index: Option<usize>,
    name: String,
    params: TrialParams,
    hyper: Hyper,
}

/// What the workers send the caller's thread.
enum Message {
    Event(Box<StudyEvent>),
    Ended(Box<TrialRecord>, Option<Model>),
    Interrupted,
}

/// The record of a trial that ended, from its result.
fn record_of(
    job: &Job,
    device: String,
    result: &Result<crate::train::Trained>,
    task: Task,
    data: &str,
) -> TrialRecord {
    let mut r = TrialRecord {
        name: job.name.clone(),
        index: job.index,
        params: job.params.clone(),
        device,
        status: TrialStatus::Failed,
        error: None,
        epochs_run: 0,
        best_epoch: None,
        validation_loss: None,
        accuracy: None,
        rmse: None,
        train_loss: None,
        stopped_early: false,
        seconds: 0.0,
        file: None,
        finished_at: now(),
        data: data.to_string(),
    };
    match result {
        Ok(t) => {
            r.status = TrialStatus::Finished;
            r.device = t.device.clone();
            r.epochs_run = t.epochs_run;
            r.best_epoch = Some(t.best.epoch);
            r.validation_loss = Some(t.best.validation.loss);
            match task {
                Task::Regression => r.rmse = Some(t.best.validation.metric),
                _ => r.accuracy = Some(t.best.validation.metric),
            }
            r.train_loss = Some(t.best.train_loss);
            r.stopped_early = t.stopped_early;
            r.seconds = t.seconds;
            r.file = Some(format!("{}.safetensors", job.name));
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// Whether an error says the device cannot train at all (rather than that this
/// trial failed there).
fn device_unusable(e: &Error) -> bool {
    matches!(
        e,
        Error::TrainingUnsupported { .. }
            | Error::DeviceCreation { .. }
            | Error::AdapterOutOfRange { .. }
            | Error::NoCompute { .. }
            | Error::DeviceUnavailable { .. }
    )
}

/// Trains `job` on `placement`, sending its progress; saves its weights when it
/// finishes. `Err(error)` when the device cannot train at all.
fn run_job(
    job: &Job,
    placement: &Placement,
    set: &TrainSet,
    study: &Study,
    out: &Path,
    stop: &AtomicBool,
    send: &crossbeam_channel::Sender<Message>,
) -> std::result::Result<(), Error> {
    let device = spec(placement);
    let epochs = job.hyper.epochs;
    let _ = send.send(Message::Event(Box::new(StudyEvent::Started {
        trial: job.name.clone(),
        device: device.clone(),
        epochs,
    })));
    let mut on_epoch = |report: &EpochReport| {
        let _ = send.send(Message::Event(Box::new(StudyEvent::Epoch {
            trial: job.name.clone(),
            device: device.clone(),
            epochs,
            report: report.clone(),
        })));
        if stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let mut result = train_member(&job.hyper, set, placement, &mut on_epoch);
    match &result {
        Err(Error::TrainingInterrupted { .. }) => {
            let _ = send.send(Message::Interrupted);
            return Ok(());
        }
        Err(e) if device_unusable(e) => return Err(e.clone()),
        _ => {}
    }
    if let Ok(t) = &result {
        if let Err(e) = save_model(&t.model, out.join(format!("{}.safetensors", job.name))) {
            result = Err(e);
        }
    }
    let record = record_of(job, device, &result, study.task, &study.data_key);
    let _ = send.send(Message::Ended(
        Box::new(record),
        result.ok().map(|t| t.model),
    ));
    Ok(())
}

impl Study {
    /// The training set every trial shares: the study's data, split (seeded by the
    /// study's seed) and standardised as the study says. Data that cannot train (a
    /// single class, no feature, rows that do not match, a value that is not finite,
    /// a validation fraction that leaves no training row) is an [`Error::Study`]
    /// naming the study file and the `data.` key.
    pub fn train_set(&self) -> Result<TrainSet> {
        let set = Data::new(self.x.clone(), self.y.clone()).and_then(|data| {
            TrainSet::new(
                self.task,
                data,
                self.validation_fraction,
                self.standardize,
                self.seed,
            )
        });
        set.map_err(|e| {
            let key = match &e {
                Error::TrainData { key, .. } | Error::NonFiniteData { key, .. } => *key,
                Error::DataRows { .. } => "y",
                _ => return e,
            };
            Error::Study {
                path: self.path.clone(),
                key: format!("data.{key}"),
                message: e.to_string(),
            }
        })
    }

    /// Refuses outputs that would replace an input or are not regular files.
    fn check_out(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(|e| crate::files::io_error(out, e))?;
        let records = out.join(RECORDS);
        let ensemble = out.join(ENSEMBLE);
        let mut inputs: Vec<&Path> = vec![self.x_path.as_path(), self.y_path.as_path()];
        if self.path.exists() {
            inputs.push(self.path.as_path());
        }
        check_outputs(&[records.as_path(), ensemble.as_path()], &inputs)
    }

    /// The records of `out` that belong to this study (by index), checked against it:
    /// a record made with other data settings, or a trial of the same name with other
    /// parameters (the study changed), is an [`Error::Study`] — use another folder.
    fn recorded(&self, out: &Path) -> Result<Vec<Option<TrialRecord>>> {
        let path = out.join(RECORDS);
        let mut done: Vec<Option<TrialRecord>> = vec![None; self.trials];
        for r in read_records(&path)? {
            let Some(i) = r.index else { continue };
            if r.data != self.data_key {
                return Err(Error::Study {
                    path: path.clone(),
                    key: "data".to_string(),
                    message: format!(
                        "{} was trained with other data settings ({}); this study has {}: use another --out",
                        r.name, r.data, self.data_key
                    ),
                });
            }
            if i >= self.trials {
                continue;
            }
            let planned = self.params(i);
            // The name's zero-padding follows the number of trials (`trial-007` of a
            // thousand, `trial-0007` of more), so a study whose `trials` grew names its
            // trial i otherwise than the record does: the number is what must agree.
            let same = trial_number(&r.name) == Some(i)
                && match (r.params.hyper(), planned.hyper()) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => false,
                };
            if !same {
                return Err(Error::Study {
                    path: path.clone(),
                    key: "space".to_string(),
                    message: format!(
                        "{} was trained with other parameters than this study's trial {i}: the study file changed; use another --out (or remove the folder)",
                        r.name
                    ),
                });
            }
            // A finished trial whose weights are gone, or do not load (a file cut short
            // by a crash of the system), is trained again.
            let weights = out.join(format!("{}.safetensors", r.name));
            if r.finished() && load_model(&weights, &LoadOptions::default()).is_err() {
                continue;
            }
            done[i] = Some(r);
        }
        Ok(done)
    }

    /// Runs the study: every trial not yet recorded in `out` (a folder, created if
    /// needed) on the `devices`' slots, one trial per slot at a time; then writes
    /// `out/ensemble.toml` with the [`keep`](Study::keep) best finished trials.
    ///
    /// Each trial that ends is recorded at once (`out/trials.jsonl`, one JSON line,
    /// synced) after its weights (`out/<trial>.safetensors`); a trial that fails (a NaN
    /// loss, a device error) is recorded as failed with its error and the study goes
    /// on. A slot whose device cannot train at all is dropped (its trial goes back to
    /// the queue). Running the same study on the same folder again skips the recorded
    /// trials (resume); a folder holding another study's trials is an error.
    ///
    /// `progress` sees every event on the caller's thread; returning
    /// [`ControlFlow::Break`] stops the study after the running epochs:
    /// [`Error::StudyStopped`], the trials that ended kept. [`Error::NoFinishedTrial`]
    /// when every trial failed.
    pub fn run(
        &self,
        out: &Path,
        devices: &Devices,
        progress: &mut dyn FnMut(&StudyEvent) -> ControlFlow<()>,
    ) -> Result<StudyResult> {
        self.check_out(out)?;
        let done = self.recorded(out)?;
        let set = self.train_set()?;
        let mut records: Vec<Option<TrialRecord>> = done.clone();
        let mut stopped = false;
        for r in done.iter().flatten() {
            if progress(&StudyEvent::Skipped(r.clone())).is_break() {
                stopped = true;
            }
        }
        let mut queue = VecDeque::new();
        for (i, d) in done.iter().enumerate() {
            if d.is_some() {
                continue;
            }
            let params = self.params(i);
            let hyper = params.hyper().map_err(|(key, message)| Error::Study {
                path: self.path.clone(),
                key: format!("space.{key}"),
                message,
            })?;
            queue.push_back(Job {
                index: Some(i),
                name: self.trial_name(i),
                params,
                hyper,
            });
        }
        let placements = devices.placements();
        if placements.is_empty() && !queue.is_empty() {
            return Err(Error::Study {
                path: self.path.clone(),
                key: "--devices".to_string(),
                message: "no device given: name at least one (cpu, adapter:N, auto)".to_string(),
            });
        }
        let mut models: Vec<(String, f64, Model)> = Vec::new();
        let stop = AtomicBool::new(stopped);
        let queue = Mutex::new(queue);
        let records_path = out.join(RECORDS);
        let mut interrupted = stopped;
        let mut write_error: Option<Error> = None;
        std::thread::scope(|scope| {
            let (send, receive) = crossbeam_channel::unbounded::<Message>();
            for placement in &placements {
                let send = send.clone();
                let (queue, stop, set) = (&queue, &stop, &set);
                let _ = std::thread::Builder::new()
                    .name(format!("trial {}", spec(placement)))
                    .spawn_scoped(scope, move || loop {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let job = match queue.lock() {
                            Ok(mut q) => q.pop_front(),
                            Err(_) => None,
                        };
                        let Some(job) = job else { break };
                        if let Err(e) = run_job(&job, placement, set, self, out, stop, &send) {
                            if let Ok(mut q) = queue.lock() {
                                q.push_front(job);
                            }
                            let _ =
                                send.send(Message::Event(Box::new(StudyEvent::DeviceDropped {
                                    device: spec(placement),
                                    error: e.to_string(),
                                })));
                            break;
                        }
                    });
            }
            drop(send);
            for message in receive {
                let event = match message {
                    Message::Event(e) => *e,
                    Message::Interrupted => {
                        interrupted = true;
                        continue;
                    }
                    Message::Ended(record, model) => {
                        if let Err(e) = append_record(&records_path, &record) {
                            // Stop: a study whose records cannot be written cannot resume.
                            write_error.get_or_insert(e);
                            stop.store(true, Ordering::Relaxed);
                        }
                        if let (Some(model), Some(loss)) = (model, record.validation_loss) {
                            models.push((record.name.clone(), loss, model));
                            models.sort_by(|a, b| a.1.total_cmp(&b.1));
                            models.truncate(self.keep);
                        }
                        if let Some(i) = record.index.filter(|&i| i < records.len()) {
                            records[i] = Some((*record).clone());
                        }
                        StudyEvent::Finished(*record)
                    }
                };
                if progress(&event).is_break() {
                    interrupted = true;
                    stop.store(true, Ordering::Relaxed);
                }
            }
        });
        if let Some(e) = write_error {
            return Err(e);
        }
        let recorded = records.iter().flatten().count();
        if interrupted || recorded < self.trials {
            if interrupted {
                return Err(Error::StudyStopped {
                    finished: recorded,
                    trials: self.trials,
                    out: out.to_path_buf(),
                });
            }
            return Err(Error::Study {
                path: self.path.clone(),
                key: "--devices".to_string(),
                message: format!(
                    "no device could train the {} remaining trials; {recorded} of {} are recorded",
                    self.trials - recorded,
                    self.trials
                ),
            });
        }
        let trials: Vec<TrialRecord> = records.into_iter().flatten().collect();
        let best = self.best_models(out, &trials, models)?;
        let result = StudyResult {
            trials,
            out: out.to_path_buf(),
            best,
            aggregate: self.aggregate.clone(),
        };
        if result.best.is_empty() {
            return Err(Error::NoFinishedTrial {
                failed: result.trials.len(),
                records: records_path,
            });
        }
        write_atomically(&out.join(ENSEMBLE), result.manifest().as_bytes())?;
        Ok(result)
    }

    /// The `keep` best finished trials' models, best first: this run's from memory,
    /// earlier runs' from their files.
    fn best_models(
        &self,
        out: &Path,
        trials: &[TrialRecord],
        mut fresh: Vec<(String, f64, Model)>,
    ) -> Result<Vec<(String, Model)>> {
        let mut ranked: Vec<&TrialRecord> = trials
            .iter()
            .filter(|r| r.finished() && r.validation_loss.is_some())
            .collect();
        ranked.sort_by(|a, b| {
            a.validation_loss
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.validation_loss.unwrap_or(f64::INFINITY))
                .then(a.index.cmp(&b.index))
        });
        ranked.truncate(self.keep);
        ranked
            .into_iter()
            .map(|r| {
                let model = match fresh.iter().position(|(n, _, _)| n == &r.name) {
                    Some(i) => fresh.swap_remove(i).2,
                    None => load_model(
                        out.join(format!("{}.safetensors", r.name)),
                        &LoadOptions::default(),
                    )?,
                };
                Ok((r.name.clone(), model))
            })
            .collect()
    }

    /// One trial of the given parameters (the one-trial mode, for an orchestrator that
    /// chooses them): trained on `placement`, its weights saved and its record appended
    /// to `out/trials.jsonl` like a study's trial, named `trial-<hash of the
    /// parameters>`. A trial of the same parameters already recorded there is
    /// returned without training again. A trial that fails is recorded and returned
    /// as failed.
    pub fn run_trial(
        &self,
        out: &Path,
        params: &TrialParams,
        placement: &Placement,
        progress: &mut dyn FnMut(&StudyEvent) -> ControlFlow<()>,
    ) -> Result<TrialRecord> {
        self.check_out(out)?;
        let hyper = params.hyper().map_err(|(key, message)| Error::Study {
            path: self.path.clone(),
            key: key.to_string(),
            message,
        })?;
        let json = serde_json::to_string(params).map_err(|e| crate::files::io_error(out, e))?;
        let name = format!("trial-{:016x}", fnv1a(json.as_bytes()));
        let records_path = out.join(RECORDS);
        if let Some(r) = read_records(&records_path)?
            .into_iter()
            .rev()
            .find(|r| r.name == name && r.data == self.data_key)
        {
            if !r.finished() || out.join(format!("{name}.safetensors")).is_file() {
                return Ok(r);
            }
        }
        let set = self.train_set()?;
        let job = Job {
            index: None,
            name,
            params: params.clone(),
            hyper,
        };
        let stop = AtomicBool::new(false);
        let (send, receive) = crossbeam_channel::unbounded::<Message>();
        let mut record = None;
        let unusable = std::thread::scope(|scope| {
            let (job, set, stop) = (&job, &set, &stop);
            let worker =
                scope.spawn(move || run_job(job, placement, set, self, out, stop, &send).err());
            for message in receive {
                let event = match message {
                    Message::Event(e) => *e,
                    Message::Interrupted => continue,
                    Message::Ended(r, _) => {
                        record = Some(*r);
                        continue;
                    }
                };
                if progress(&event).is_break() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            worker.join().unwrap_or_else(|_| {
                Some(Error::WorkerFailed {
                    device: spec(placement),
                    message: "the trial's thread panicked".to_string(),
                })
            })
        });
        if let Some(e) = unusable {
            return Err(e);
        }
        let Some(record) = record else {
            return Err(Error::StudyStopped {
                finished: 0,
                trials: 1,
                out: out.to_path_buf(),
            });
        };
        append_record(&records_path, &record)?;
        let _ = progress(&StudyEvent::Finished(record.clone()));
        Ok(record)
    }
}

/// FNV-1a, 64 bits: a stable name for a set of parameters.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The number of a trial named `trial-` and decimal digits (any zero-padding).
fn trial_number(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("trial-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
