//! The autotune's cache: the chosen tile (or coop shape) per adapter and shape class,
//! in memory for the life of the process and optionally in a TOML file between
//! processes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::{
    io_error, read_regular_to_string, toml_error, write_atomically, TEXT_FILE_LIMIT,
};
use crate::tile::{CoopShape, TileConfig};

/// Power-of-two buckets of (rows, outputs, inputs), between 16 and 8192.
pub(super) fn bucket(v: usize) -> u32 {
    v.clamp(16, 8192).next_power_of_two() as u32
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Key {
    pub(crate) adapter: String,
    pub(crate) precision: String,
    pub(crate) rows: u32,
    pub(crate) outputs: u32,
    pub(crate) inputs: u32,
    /// Whether the input width is a multiple of 4: only such layers run the `vec4`
    /// kernels, so the two kinds are timed apart (entries of files written before
    /// the `vec4` tiles read as `false`, and layers that can run them are timed again).
    #[serde(default)]
    pub(crate) aligned: bool,
    /// Members that run the layer in one dispatch (a stack, see src/gpu/executor.rs),
    /// rounded up to a power of two: a stack gives the device more workgroups than one
    /// member, which can favour larger tiles (entries of files written before stacks
    /// read as 1).
    #[serde(default = "one")]
    pub(crate) members: u32,
    /// How many candidates the choice was made among (tiles, or coop shapes): once
    /// candidates are added, a layer is timed again (entries of files written before
    /// this field read as 0).
    #[serde(default)]
    pub(crate) candidates: u32,
}

fn one() -> u32 {
    1
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: Key,
    config: TileConfig,
}

#[derive(Serialize, Deserialize)]
struct CoopEntry {
    #[serde(flatten)]
    key: Key,
    shape: CoopShape,
}

#[derive(Default, Serialize, Deserialize)]
struct CacheFile {
    #[serde(default)]
    entry: Vec<Entry>,
    /// Shapes of the cooperative-matrix kernel.
    #[serde(default)]
    coop: Vec<CoopEntry>,
}

pub(super) fn cache() -> &'static Mutex<HashMap<Key, TileConfig>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, TileConfig>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

pub(super) fn coop_cache() -> &'static Mutex<HashMap<Key, CoopShape>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, CoopShape>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn key_order(k: &Key) -> (&str, &str, u32, u32, u32, bool, u32, u32) {
    (
        &k.adapter,
        &k.precision,
        k.rows,
        k.outputs,
        k.inputs,
        k.aligned,
        k.members,
        k.candidates,
    )
}

/// Merges a cache file into the in-memory cache; a missing file is an empty cache.
/// The file must be a regular file of at most 1 MiB (`TEXT_FILE_LIMIT`).
pub(super) fn load_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, e)),
        Ok(_) => {}
    }
    let text = read_regular_to_string(path, TEXT_FILE_LIMIT)?;
    let file: CacheFile = toml::from_str(&text).map_err(|e| Error::Manifest {
        path: path.to_path_buf(),
        message: format!("autotune cache: {}", toml_error(&text, &e)),
    })?;
    let mut map = cache().lock().unwrap_or_else(PoisonError::into_inner);
    for e in file.entry {
        map.entry(e.key).or_insert(e.config);
    }
    let mut coop = coop_cache().lock().unwrap_or_else(PoisonError::into_inner);
    for e in file.coop {
        coop.entry(e.key).or_insert(e.shape);
    }
    Ok(())
}

pub(super) fn save_file(path: &Path) -> Result<()> {
    let mut entry: Vec<Entry> = cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(k, c)| Entry {
            key: k.clone(),
            config: *c,
        })
        .collect();
    entry.sort_by(|a, b| key_order(&a.key).cmp(&key_order(&b.key)));
    let mut coop: Vec<CoopEntry> = coop_cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(k, c)| CoopEntry {
            key: k.clone(),
            shape: *c,
        })
        .collect();
    coop.sort_by(|a, b| key_order(&a.key).cmp(&key_order(&b.key)));
    let text = toml::to_string(&CacheFile { entry, coop }).map_err(|e| io_error(path, e))?;
    write_atomically(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cache files written before the `vec4` tiles, stacks and the prefetch tiles hold
    /// entries without `aligned`, `members` and `candidates`: they read as unaligned,
    /// single-member keys chosen among no candidates (so every layer is timed again
    /// among today's), with a strided tile.
    #[test]
    fn old_cache_entries_read_as_unaligned_and_single_member() {
        let old = r#"
            [[entry]]
            adapter = "Vulkan/llvmpipe"
            precision = "f32"
            rows = 64
            outputs = 512
            inputs = 1024
            config = { wg_x = 16, wg_y = 16, tm = 4, tn = 4, bk = 16 }
        "#;
        let file: CacheFile = toml::from_str(old).unwrap();
        let e = &file.entry[0];
        assert!(!e.key.aligned);
        assert_eq!(e.key.members, 1);
        assert_eq!(e.key.candidates, 0);
        assert!(!e.config.vec4);
        let again: CacheFile = toml::from_str(&toml::to_string(&file).unwrap()).unwrap();
        assert_eq!(again.entry[0].key, e.key);
    }
}
