//! Files as every layer writes them: errors that name the path, and writes that
//! never leave a partial file (a temporary name beside the target, then a rename).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) use crate::error::{excerpt, QUOTE_LIMIT};
use crate::error::{Error, Result};

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so
/// that `path` never holds a partial file. `path` is refused first (nothing written)
/// when it is a symbolic link, a directory, a device node, a fifo or a socket: see
/// [`check_outputs`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    check_outputs(&[path], &[])?;
    let mut staged = StagedOutputs::new();
    staged.add(path, bytes)?;
    staged.commit()
}

/// Checks, before anything is written, that every one of `outputs` can be written
/// without destroying anything else: each must be a new name or an existing regular
/// file; none may name the same file as another output or as one of `inputs` (the
/// files a run reads), however it is spelled. Refused, with an error naming the path
/// and what it is:
///
/// - a **symbolic link**, dangling or not: the rename that puts an output in place
///   would replace the link, not the file it names;
/// - a **directory, character or block device (`/dev/null`), fifo or socket**: the
///   rename would replace it with a regular file;
/// - **one of `inputs`**: the same folder and name once `.`, `..` and linked folders
///   are resolved (`m.toml`, `./m.toml`, `d/../m.toml`), or, on Unix, the same file
///   (device and inode: a hard link, or a link to it);
/// - **two outputs naming one file**.
///
/// `io::stage_tensors` and
/// `io::write_tensors` make these checks themselves; a caller
/// calls this to refuse its outputs before it spends time on a run.
pub fn check_outputs(outputs: &[&Path], inputs: &[&Path]) -> Result<()> {
    let places: Vec<PathBuf> = outputs.iter().map(|p| place(p)).collect();
    for (i, path) in outputs.iter().enumerate() {
        if places[..i].contains(&places[i]) {
            return Err(io_error(path, "the same file is given for two outputs"));
        }
        check_target(path)?;
    }
    let inputs: Vec<_> = inputs
        .iter()
        .map(|&input| {
            // `metadata` follows a link: an input given as a link is its file.
            let id = std::fs::metadata(input).ok().and_then(|m| file_id(&m));
            (input, place(input), id)
        })
        .collect();
    for (path, at) in outputs.iter().zip(&places) {
        // An output that exists is a regular file by now (`check_target`).
        let id = std::fs::symlink_metadata(path)
            .ok()
            .and_then(|m| file_id(&m));
        for (input, input_at, input_id) in &inputs {
            let same_place = at == input_at;
            if same_place || (id.is_some() && id == *input_id) {
                let other_name = if same_place {
                    ""
                } else {
                    " (the same file under another name)"
                };
                return Err(refused(
                    path,
                    format!("it is this run's input {}{other_name}", quote_path(input)),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses `path` as an output when it exists and is not a regular file (a symbolic
/// link included, whatever it points to).
fn check_target(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // A new file; a folder that does not exist fails at the write, naming it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, e)),
    };
    let kind = meta.file_type();
    if kind.is_file() {
        Ok(())
    } else if kind.is_symlink() {
        let to = std::fs::read_link(path)
            .map(|to| format!(" to {}", quote_path(&to)))
            .unwrap_or_default();
        Err(refused(
            path,
            format!(
                "it is a symbolic link{to}, which the output would replace; give the file's own path"
            ),
        ))
    } else {
        Err(refused(
            path,
            format!(
                "it is {}, not a regular file",
                with_article(file_kind(&kind))
            ),
        ))
    }
}

/// The error for a refused output; `what` says what the path is.
fn refused(path: &Path, what: String) -> Error {
    Error::OutputRefused {
        path: path.to_path_buf(),
        what,
    }
}

/// A path as an error quotes it ([`excerpt`]).
fn quote_path(path: &Path) -> String {
    excerpt(&path.display().to_string())
}

/// The file's identity (device, inode), where the platform gives one.
#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// Where `path` is, whatever its spelling (`o.npy`, `./o.npy`, `d/../o.npy`): its
/// folder resolved, then its name; the path itself when the folder does not exist.
pub(crate) fn place(path: &Path) -> PathBuf {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (folder.canonicalize(), path.file_name()) {
        (Ok(folder), Some(name)) => folder.join(name),
        _ => path.to_path_buf(),
    }
}

/// The temporary files this process is writing now, for [`stop_writes`]. A file is
/// created and registered under this lock, and renamed into place and unregistered
/// under it, so that whoever holds it sees every partial file there is.
static PARTIAL_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn partial_files() -> MutexGuard<'static, Vec<PathBuf>> {
    PARTIAL_FILES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Outputs written in full under temporary names beside their targets (hidden,
/// ending in `.partial`), not yet in place. [`StagedOutputs::commit`] renames them all
/// into place; dropping the value instead removes them, leaving the targets as they
/// were. Made by `io::stage_tensors`.
#[must_use = "dropping staged outputs removes them; call `commit` to put them in place"]
#[derive(Debug)]
pub struct StagedOutputs {
    /// (temporary file, target), in the order they were written.
    parts: Vec<(PathBuf, PathBuf)>,
}

impl StagedOutputs {
    pub(crate) fn new() -> Self {
        Self { parts: Vec::new() }
    }

    /// Writes `bytes` to a new temporary file beside `path`. On an error, the files
    /// written so far stay staged (and are removed when `self` is dropped).
    pub(crate) fn add(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let mut file = {
            let mut registry = partial_files();
            let mut tries = 0;
            loop {
                let tmp = temporary_path(path);
                // `create_new`: never a file (or a link) that is already there.
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                {
                    Ok(file) => {
                        registry.push(tmp.clone());
                        self.parts.push((tmp, path.to_path_buf()));
                        break file;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => {
                        tries += 1;
                    }
                    Err(e) => return Err(io_error(path, e)),
                }
            }
        };
        // On the disk before the rename makes it the target: else a crash of the
        // system could leave the target's name on a file cut short.
        file.write_all(bytes).map_err(|e| io_error(path, e))?;
        match file.sync_all() {
            Ok(()) => Ok(()),
            // A file system that cannot sync (some FUSE and network mounts) keeps what
            // it can; a real failure of the disk is an error.
            Err(e) if sync_unsupported(&e) => Ok(()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    /// Renames every staged file into place. Each target is checked again first (a
    /// symbolic link or a device node made there since is refused, and nothing is put
    /// in place). The renames hold the lock of [`stop_writes`], so a signal handler
    /// that stops the writes sees all of them in place or none.
    pub fn commit(mut self) -> Result<()> {
        for (_, target) in &self.parts {
            // On an error `self` is dropped, removing every temporary file.
            check_target(target)?;
        }
        let parts = std::mem::take(&mut self.parts);
        let mut registry = partial_files();
        let mut result = Ok(());
        for (tmp, target) in &parts {
            if result.is_ok() {
                // A rename can fail only if the folder changed meanwhile.
                if let Err(e) = std::fs::rename(tmp, target) {
                    result = Err(io_error(target, e));
                }
            }
            if result.is_err() {
                let _ = std::fs::remove_file(tmp);
            }
            registry.retain(|p| p != tmp);
        }
        if result.is_ok() {
            // The renames themselves on the disk (best effort: not every system can
            // sync a folder).
            let mut folders: Vec<&Path> = parts.iter().filter_map(|(_, t)| t.parent()).collect();
            folders.dedup();
            for folder in folders {
                let folder = if folder.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    folder
                };
                if let Ok(dir) = std::fs::File::open(folder) {
                    let _ = dir.sync_all();
                }
            }
        }
        result
    }
}

impl Drop for StagedOutputs {
    fn drop(&mut self) {
        if self.parts.is_empty() {
            return;
        }
        let mut registry = partial_files();
        for (tmp, _) in self.parts.drain(..) {
            let _ = std::fs::remove_file(&tmp);
            registry.retain(|p| *p != tmp);
        }
    }
}

/// What [`stop_writes`] returns: while it is held, no output write of this process
/// can make a temporary file or put one in place (they wait).
#[must_use = "writes resume when the guard is dropped: hold it until the process exits"]
pub struct WritesStopped {
    _registry: MutexGuard<'static, Vec<PathBuf>>,
}

impl std::fmt::Debug for WritesStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WritesStopped")
    }
}

/// Stops this process's output writes for good, for a thread that handles a
/// termination signal (SIGINT, SIGTERM, SIGHUP) before it exits the process: removes
/// every temporary file that a write ([`write_atomically`],
/// `io::write_tensors`, [`StagedOutputs`]) has made and not
/// yet renamed into place, and returns a guard under which no write can make another
/// or rename one. Hold the guard until the process exits. A write that is renaming its
/// files into place finishes first, so a set of outputs is in place whole or not at
/// all.
///
/// Not for a signal handler itself: it takes a lock and removes files. Run it on a
/// thread, as `signal_hook::iterator::Signals` does.
pub fn stop_writes() -> WritesStopped {
    let mut registry = partial_files();
    for tmp in registry.drain(..) {
        let _ = std::fs::remove_file(&tmp);
    }
    WritesStopped {
        _registry: registry,
    }
}

/// Whether a failed sync means the file system does not sync (EINVAL, ENOTSUP,
/// ENOSYS), rather than that the data did not reach the disk.
fn sync_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || e.kind() == std::io::ErrorKind::InvalidInput
        || matches!(e.raw_os_error(), Some(22 | 38 | 95))
}

/// A hidden name beside `path` for a file that is being written, of its own in this
/// process (two writes never share one).
pub(crate) fn temporary_path(path: &Path) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.partial", std::process::id()))
}

/// The most bytes a text file the crate reads whole may hold: a manifest or an autotune
/// cache (both are a few kilobytes of TOML). Larger files are refused before they are
/// read, with [`Error::FileTooLarge`].
pub(crate) const TEXT_FILE_LIMIT: u64 = 1 << 20;

/// Reads the regular file at `path` (a symbolic link to one is followed) whole, in one
/// open, after checking its size against `limit`.
///
/// A directory, a device node (`/dev/zero`), a fifo or a socket is
/// [`Error::NotRegularFile`], found before the file is opened, so a fifo never blocks
/// and a device is never read. A file larger than `limit` bytes is
/// [`Error::FileTooLarge`]. Exactly the length the file has when it is opened is read
/// (a file that grows meanwhile is read to that length, one that shrinks is an
/// [`Error::Io`]), into a buffer reserved fallibly: a length this process cannot hold
/// is [`Error::ReadAllocation`], not an abort.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let not_regular = |meta: &std::fs::Metadata| {
        let kind = file_kind(&meta.file_type());
        (kind != "regular file").then(|| Error::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        })
    };
    // Checked before the open: opening a fifo for reading blocks until a writer comes.
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if let Some(e) = not_regular(&meta) {
        return Err(e);
    }
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    // The file opened, which may not be the one checked if the path was replaced
    // meanwhile.
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if let Some(e) = not_regular(&meta) {
        return Err(e);
    }
    let size = meta.len();
    if size > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let too_large = || Error::ReadAllocation {
        path: path.to_path_buf(),
        bytes: size,
    };
    let capacity = usize::try_from(size).map_err(|_| too_large())?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(capacity).map_err(|_| too_large())?;
    file.take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 != size {
        return Err(io_error(
            path,
            format!(
                "the file shrank while it was read: {} of its {size} bytes were there",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_regular`] for a UTF-8 text file; text that is not UTF-8 is an [`Error::Io`]
/// saying where the first invalid byte is.
pub(crate) fn read_regular_to_string(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_regular(path, limit)?).map_err(|e| {
        io_error(
            path,
            format!(
                "not UTF-8 text: invalid byte at offset {}",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// A [`file_kind`] as a refused output's message says it; a fifo by its longer name.
fn with_article(kind: &str) -> String {
    match kind {
        "fifo" => "a named pipe (fifo)".to_string(),
        other => format!("a {other}"),
    }
}

/// What a file is, in words, for [`Error::NotRegularFile`] and a refused output.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
        if t.is_fifo() {
            return "fifo";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// A message from a parser (TOML, JSON) with every quoted part (between backticks or
/// double quotes) longer than [`QUOTE_LIMIT`] characters cut to an [`excerpt`], and
/// the whole cut to its start and end if it is still longer than a few quotes.
pub(crate) fn bound_quotes(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let delimiter = &rest[open..open + 1];
        out.push_str(&rest[..open + 1]);
        let inner = &rest[open + 1..];
        let (quoted, after) = match inner.find(delimiter) {
            Some(close) => (&inner[..close], &inner[close..]),
            None => (inner, ""),
        };
        out.push_str(&excerpt(quoted));
        match after.strip_prefix(delimiter) {
            Some(after) => {
                out.push_str(delimiter);
                rest = after;
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    let limit = 4 * QUOTE_LIMIT;
    let chars = out.chars().count();
    if chars <= limit {
        return out;
    }
    let head: String = out.chars().take(limit / 2).collect();
    let tail: String = out.chars().skip(chars - limit / 2).collect();
    format!("{head} … {tail} ({chars} characters in all)")
}

/// A TOML parse error of `text` in bounded words: where it is (line and column), at
/// most [`QUOTE_LIMIT`] characters of that line around it, and the parser's message
/// with its quotes bounded. (The error's own display quotes the whole line, however
/// long.)
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = bound_quotes(e.message().trim_end());
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let start = (0..=start)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let content = text[line_start..line_end].trim_end_matches('\r');
    let length = content.chars().count();
    let near = if length <= QUOTE_LIMIT {
        content.to_string()
    } else {
        // A window of the line that starts a little before the error.
        let from = (column - 1).saturating_sub(QUOTE_LIMIT / 4);
        let window: String = content.chars().skip(from).take(QUOTE_LIMIT).collect();
        let before = if from > 0 { "…" } else { "" };
        let after = if from + QUOTE_LIMIT < length {
            "…"
        } else {
            ""
        };
        format!("{before}{window}{after} (a line of {length} characters)")
    };
    format!("TOML parse error at line {line}, column {column}: {message}\n  | {near}")
}
