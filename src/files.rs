//! Files as every layer writes them: errors that name the path, and writes that
//! never leave a partial file (a temporary name beside the target, then a rename).

use std::path::Path;

use crate::error::{Error, Result};

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so
/// that `path` never holds a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_path(path);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(path, e)
        })
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

/// What a file is, in words, for [`Error::NotRegularFile`].
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

/// The most characters of user input (a value, a name, a line of a file) an error
/// message quotes.
pub(crate) const QUOTE_LIMIT: usize = 200;

/// `text` as an error quotes it: whole when it has at most [`QUOTE_LIMIT`] characters,
/// else its first ones, an ellipsis and its length.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        None => text.to_string(),
        Some((end, _)) => format!(
            "{}… ({} characters in all)",
            &text[..end],
            text.chars().count()
        ),
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
