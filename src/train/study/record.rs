//! Trial records: one JSON object per line of `OUT/trials.jsonl`, appended and synced
//! one at a time as trials finish.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::space::TrialParams;
use crate::error::{Error, Result};
use crate::files::{io_error, read_regular};

/// How a trial ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TrialStatus {
    /// It trained; its weights are in `OUT/<name>.safetensors`.
    Finished,
    /// It failed (a NaN loss, a device error); `error` says why.
    Failed,
}

/// One trial's record, as `trials.jsonl` holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TrialRecord {
    /// `trial-007` (a study's trial), or `trial-<hash>` in one-trial mode.
    pub name: String,
    /// Its index in the study (absent in one-trial mode).
    pub index: Option<usize>,
    /// Its parameters.
    pub params: TrialParams,
    /// Where it trained (the engine's description, or the placement it failed on).
    pub device: String,
    /// Finished or failed.
    pub status: TrialStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Epochs run.
    pub epochs_run: usize,
    /// The best epoch (from 1): its weights are the trial's.
    pub best_epoch: Option<usize>,
    /// The best epoch's validation loss.
    pub validation_loss: Option<f64>,
    /// The best epoch's validation accuracy (classification).
    pub accuracy: Option<f64>,
    /// The best epoch's validation root mean squared error (regression).
    pub rmse: Option<f64>,
    /// The best epoch's training loss.
    pub train_loss: Option<f64>,
    /// Whether early stopping ended it.
    pub stopped_early: bool,
    /// Wall time of its training.
    pub seconds: f64,
    /// The weights file, relative to the output folder.
    pub file: Option<String>,
    /// When it ended, seconds since the Unix epoch.
    pub finished_at: f64,
    /// The data settings it was trained with (a resumed study must agree).
    pub data: String,
}

impl TrialRecord {
    /// Whether it finished (and has weights).
    pub fn finished(&self) -> bool {
        self.status == TrialStatus::Finished
    }
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The most bytes of `trials.jsonl` read (a record is well under 2 KiB).
const RECORDS_LIMIT: u64 = 1 << 30;

/// The records of `path` (none when it does not exist). A last line without its
/// newline (a write cut short) is ignored; any other line that is not a record is an
/// error naming the line.
pub(crate) fn read_records(path: &Path) -> Result<Vec<TrialRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = read_regular(path, RECORDS_LIMIT)?;
    let text = String::from_utf8_lossy(&bytes);
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<TrialRecord>(line) {
            Ok(r) => records.push(r),
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(e) => {
                return Err(Error::Study {
                    path: path.to_path_buf(),
                    key: format!("line {}", i + 1),
                    message: format!("not a trial record: {e}"),
                })
            }
        }
    }
    Ok(records)
}

/// Appends `record` as one line and syncs it to disk. A previous write cut short
/// (no final newline) is ended first, so that this record starts its own line.
pub(crate) fn append_record(path: &Path, record: &TrialRecord) -> Result<()> {
    let mut line = serde_json::to_string(record).map_err(|e| io_error(path, e))?;
    line.push('\n');
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_file() {
            return Err(Error::OutputRefused {
                path: path.to_path_buf(),
                what: "not a regular file".to_string(),
            });
        }
        let torn = meta.len() > 0
            && std::fs::read(path)
                .map(|b| b.last() != Some(&b'\n'))
                .unwrap_or(false);
        if torn {
            line.insert(0, '\n');
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|e| io_error(path, e))
}
