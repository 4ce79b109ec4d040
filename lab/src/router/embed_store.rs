//! An on-disk, append-only store of prompt embeddings keyed by a hash of the text, so offline
//! training and evaluation embed each prompt once per model.
//!
//! Layout: `b"TRE1"`, the dimension (u32 LE), then records of a 16-byte text key and `dim` f32 LE.
//! A torn last record (an interrupted run) is ignored on load.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use tandem_router_policy::encoder::{Encoder, text_key};
use tandem_router_policy::{Error, Result};

const MAGIC: &[u8; 4] = b"TRE1";

/// An embedding with its text key.
type Keyed = (u128, Arc<[f32]>);

/// Embeddings by text key, backed by one file.
#[derive(Debug)]
pub struct EmbeddingStore {
    path: PathBuf,
    dim: usize,
    map: HashMap<u128, Arc<[f32]>>,
}

impl EmbeddingStore {
    /// Opens (or starts) the store at `path` for vectors of width `dim`.
    pub fn open(path: impl Into<PathBuf>, dim: usize) -> Result<Self> {
        let path = path.into();
        let mut map = HashMap::new();
        if path.exists() {
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| Error::io(&path, e))?;
            if bytes.len() < 8 || &bytes[..4] != MAGIC {
                return Err(Error::Format {
                    path,
                    message: "not an embedding store".into(),
                });
            }
            let stored_dim = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
            if stored_dim != dim {
                return Err(Error::Format {
                    path,
                    message: format!("dimension {stored_dim}, expected {dim}"),
                });
            }
            let record = 16 + 4 * dim;
            for chunk in bytes[8..].chunks_exact(record) {
                let mut key = [0u8; 16];
                key.copy_from_slice(&chunk[..16]);
                let v: Vec<f32> = chunk[16..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                map.insert(u128::from_le_bytes(key), Arc::from(v));
            }
        }
        Ok(Self { path, dim, map })
    }

    /// The store for `model_id` under `<cache_root>/router-embeddings/`.
    pub fn in_cache(cache_root: &Path, model_id: &str, dim: usize) -> Result<Self> {
        let dir = cache_root.join("router-embeddings");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Self::open(dir.join(format!("{model_id}.bin")), dim)
    }

    /// Number of stored embeddings.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The stored embedding of `text`.
    pub fn get(&self, text: &str) -> Option<Arc<[f32]>> {
        self.map.get(&text_key(text)).cloned()
    }

    /// Appends embeddings to the file and the map.
    pub fn append(&mut self, items: &[(u128, Arc<[f32]>)]) -> Result<()> {
        let fresh = !self.path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        let mut w = BufWriter::new(file);
        let io = |e| Error::io(&self.path, e);
        if fresh {
            w.write_all(MAGIC).map_err(io)?;
            w.write_all(&(self.dim as u32).to_le_bytes()).map_err(io)?;
        }
        for (key, v) in items {
            if v.len() != self.dim {
                return Err(Error::InvalidArgument(format!(
                    "embedding width {}",
                    v.len()
                )));
            }
            w.write_all(&key.to_le_bytes()).map_err(io)?;
            for x in v.iter() {
                w.write_all(&x.to_le_bytes()).map_err(io)?;
            }
        }
        w.flush().map_err(io)?;
        for (key, v) in items {
            self.map.insert(*key, v.clone());
        }
        Ok(())
    }

    /// Embeddings of all `texts`, computing the missing ones with `encoder` on `workers` threads
    /// (batches of similar length) and saving them as they come.
    pub fn embed_all(
        &mut self,
        encoder: &Encoder,
        texts: &[&str],
        workers: usize,
        mut progress: impl FnMut(usize, usize) + Send,
    ) -> Result<Vec<Arc<[f32]>>> {
        let mut missing: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in texts {
            let k = text_key(t);
            if !self.map.contains_key(&k) && seen.insert(k) {
                missing.push(t);
            }
        }
        // Similar lengths in a batch waste little on padding.
        missing.sort_by_key(|t| t.len());
        let batches: Vec<&[&str]> = missing.chunks(8).collect();
        let total = missing.len();
        let next = Mutex::new(0usize);
        let done: Mutex<(Vec<Keyed>, usize)> = Mutex::new((Vec::new(), 0));
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let store = Mutex::new(&mut *self);
        let progress = Mutex::new(&mut progress);
        std::thread::scope(|scope| {
            for _ in 0..workers.max(1) {
                scope.spawn(|| {
                    loop {
                        let i = {
                            let mut n = next.lock();
                            let i = *n;
                            *n += 1;
                            i
                        };
                        if i >= batches.len() || failure.lock().is_some() {
                            break;
                        }
                        let batch = batches[i];
                        match encoder.embed_uncached(batch) {
                            Ok(vs) => {
                                let mut d = done.lock();
                                d.0.extend(batch.iter().map(|t| text_key(t)).zip(vs));
                                d.1 += batch.len();
                                if d.0.len() >= 256 {
                                    let items = std::mem::take(&mut d.0);
                                    if let Err(e) = store.lock().append(&items) {
                                        *failure.lock() = Some(e);
                                    }
                                }
                                (progress.lock())(d.1, total);
                            }
                            Err(e) => *failure.lock() = Some(e),
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        let rest = std::mem::take(&mut done.lock().0);
        self.append(&rest)?;
        texts
            .iter()
            .map(|t| {
                self.get(t)
                    .ok_or_else(|| Error::InvalidArgument("embedding missing after run".into()))
            })
            .collect()
    }
}
