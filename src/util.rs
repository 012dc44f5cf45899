//! Small shared helpers.

use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Free heap memory glibc may keep at the top of a heap before returning it to the OS.
pub const RETAINED_TRIM_BYTES: i32 = 64 << 20;

/// Makes glibc's allocator keep freed memory for reuse instead of returning it to the OS
/// at once.
///
/// A training step allocates and frees the same few hundred MiB of activations every step.
/// By default glibc serves each large block with a fresh `mmap` and unmaps it on free, so
/// every step pays first-touch page faults on all of it (measured: MiniLM-L6 8x512 training
/// step 5.08 s -> 4.06 s with mmap off). With `mmap` off, freed blocks stay in the heap
/// and the next step's allocations reuse warm pages; the activation pool
/// (`kernels::workspace`) keeps the largest ones, bounded by the run's working set.
/// What is retained is bounded too: free memory beyond [`RETAINED_TRIM_BYTES`] at the top
/// of a heap goes back to the OS, and [`release_freed_memory`] returns every free page
/// between phases (issue 16: with trimming off as well, `demo` held 4.8 GB of RSS for
/// 290 MiB of tensors). A no-op on other platforms and C libraries.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; it is called once at start-up,
    // before the program spawns threads, and a rejected value leaves the default.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, RETAINED_TRIM_BYTES);
    }
}

/// Returns the memory a finished phase no longer needs to the OS: empties the activation
/// pool and gives every free heap page back (`malloc_trim`). For use between phases whose
/// shapes differ (the runs of `demo`), not inside a training loop.
pub fn release_freed_memory() {
    crate::kernels::workspace::clear();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the OS; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`write_atomic`] with the contents written by `write` into the temporary path (for
/// writers that stream to a file of their own): then fsync, rename, fsync of the directory;
/// the temporary is removed on failure.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        write(&tmp)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        // Make the rename itself durable (best effort: not every file system allows it).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory, so readers never see a half-written file and a crash
/// leaves the old or the new contents.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

// ------------------------------------------------------------------ directories and time

/// The absolute parent directory and the file name of `dir`.
pub fn split_dir(dir: &Path) -> Result<(PathBuf, String)> {
    let abs =
        std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let name = abs
        .file_name()
        .filter(|n| *n != "..")
        .with_context(|| {
            format!(
                "{} cannot be used as a checkpoint directory (no final name)",
                dir.display()
            )
        })?
        .to_string_lossy()
        .to_string();
    let parent = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok((parent, name))
}

/// Builds a new version of directory `dir` with `fill` in a temporary sibling, carries
/// over entries of the old `dir` that `fill` did not write (files are hard-linked or
/// copied, so the old directory stays whole until the swap), then swaps the new directory
/// in by two renames and removes the old one. Readers see either the old or the new
/// directory; a crash between the two renames leaves the old one as `.<name>.old-<pid>`.
pub fn replace_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (parent, name) = split_dir(dir)?;
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let target = parent.join(&name);
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        fill(&tmp)?;
        if target.exists() {
            ensure!(
                target.is_dir(),
                "{} exists and is not a directory",
                target.display()
            );
            carry_over_extras(&target, &tmp)?;
            if old.exists() {
                std::fs::remove_dir_all(&old)
                    .with_context(|| format!("cannot remove {}", old.display()))?;
            }
            std::fs::rename(&target, &old).with_context(|| {
                format!("cannot move {} to {}", target.display(), old.display())
            })?;
            std::fs::rename(&tmp, &target).with_context(|| {
                format!("cannot move {} to {}", tmp.display(), target.display())
            })?;
            sync_dir(&parent);
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        } else {
            std::fs::rename(&tmp, &target).with_context(|| {
                format!("cannot move {} to {}", tmp.display(), target.display())
            })?;
            sync_dir(&parent);
        }
        Ok(())
    })();
    if result.is_err() && tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Entries of `from` that `to` lacks, hard-linked into `to` (copied across file systems;
/// directories recreated and filled the same way), so `from` stays whole until the swap:
/// moving a subdirectory (e.g. `resume/`) would leave its only copy in the temporary
/// directory, which the next run deletes if the process dies before the swap.
fn carry_over_extras(from: &Path, to: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let dest = to.join(entry.file_name());
        if dest.symlink_metadata().is_ok() {
            continue;
        }
        let src = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", src.display()))?;
        if kind.is_dir() {
            std::fs::create_dir(&dest)
                .with_context(|| format!("cannot create {}", dest.display()))?;
            carry_over_extras(&src, &dest)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&src)
                .with_context(|| format!("cannot read the link {}", src.display()))?;
            #[cfg(unix)]
            std::os::unix::fs::symlink(&link, &dest)
                .with_context(|| format!("cannot create the link {}", dest.display()))?;
            #[cfg(not(unix))]
            let _ = link;
        } else if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dest.display()))?;
        }
    }
    Ok(())
}

/// Makes the renames durable (best effort; not every file system supports it).
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Current UTC time as RFC 3339 (`2026-01-31T12:00:00Z`).
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Seconds since the Unix epoch as RFC 3339 UTC (days to civil date: H. Hinnant's
/// `civil_from_days`).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Cleans up after interrupted [`replace_dir_atomically`] calls on `dir`, whose complete
/// versions hold `complete_file` (written last). A crash between the two renames leaves no
/// `dir` but a complete `.<name>.tmp-<pid>` (the new version) and `.<name>.old-<pid>` (the
/// previous one): the newest complete one is renamed back to `dir`. Then temporaries
/// `.<name>.tmp-*` are removed, and `.<name>.old-*` ones once `dir` is complete (before that
/// they may hold the only copy and are kept).
pub fn remove_stale_temporaries(dir: &Path, complete_file: &str) -> Result<()> {
    let (parent, name) = split_dir(dir)?;
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(());
    };
    let (tmp_prefix, old_prefix) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    let mut temporaries: Vec<(bool, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            (n.starts_with(&tmp_prefix) || n.starts_with(&old_prefix))
                .then(|| (n.starts_with(&tmp_prefix), e.path()))
        })
        .collect();
    let target = parent.join(&name);
    if !target.exists() {
        // New versions (tmp) before old ones.
        temporaries.sort_by_key(|(is_tmp, _)| !is_tmp);
        if let Some((_, done)) = temporaries
            .iter()
            .find(|(_, p)| p.join(complete_file).is_file())
        {
            std::fs::rename(done, &target).with_context(|| {
                format!(
                    "cannot move {} back to {}",
                    done.display(),
                    target.display()
                )
            })?;
            sync_dir(&parent);
        }
    }
    let complete = target.join(complete_file).is_file();
    for (is_tmp, path) in temporaries {
        if path.exists() && (is_tmp || complete) {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// A field in which two serialised values differ: its dotted path (`method.keep_ratio`),
/// its own name (`keep_ratio`), and each side as a user would type it (None: absent or
/// null).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDifference {
    pub path: String,
    pub key: String,
    pub left: Option<String>,
    pub right: Option<String>,
}

/// The fields of `left` and `right` (plain data with derived `Serialize`) whose values
/// differ, nested objects field by field, in key order; fields named in `skip` (at any
/// depth) are passed over.
pub fn field_differences(
    left: &impl serde::Serialize,
    right: &impl serde::Serialize,
    skip: &[&str],
) -> Result<Vec<FieldDifference>> {
    use serde_json::Value;
    fn show(v: Option<&Value>) -> Option<String> {
        Some(match v? {
            Value::Null => return None,
            Value::String(s) => s.clone(),
            // f32 settings (e.g. 0.7) as typed, not as their f64 expansion.
            Value::Number(n) if n.is_f64() => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if (x as f32) as f64 == x {
                    (x as f32).to_string()
                } else {
                    x.to_string()
                }
            }
            Value::Array(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|v| show(Some(v)).unwrap_or_else(|| "null".into()))
                    .collect();
                format!("[{}]", items.join(", "))
            }
            other => other.to_string(),
        })
    }
    fn walk(path: &str, a: &Value, b: &Value, skip: &[&str], out: &mut Vec<FieldDifference>) {
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return;
        };
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys.into_iter().filter(|k| !skip.contains(&k.as_str())) {
            let name = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) if x.is_object() && y.is_object() => {
                    walk(&name, x, y, skip, out)
                }
                (x, y) if x == y => {}
                (x, y) => out.push(FieldDifference {
                    path: name,
                    key: key.clone(),
                    left: show(x),
                    right: show(y),
                }),
            }
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(left)?,
        &serde_json::to_value(right)?,
        skip,
        &mut out,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = std::env::temp_dir().join(format!("corefocus-util-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/report.json");
        write_atomic(&path, b"first, longer contents").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("report.json")]);

        // A directory where the file should go: an error naming it, the old state kept.
        std::fs::create_dir_all(dir.join("sub/taken")).unwrap();
        let err = write_atomic(&dir.join("sub/taken"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("taken"), "{err:#}");
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 16: carrying the old directory's extras into the new one must leave the old
    /// one whole (a subdirectory such as `resume/` used to be moved, so a crash before the
    /// swap left its only copy in a temporary the next run deletes).
    #[test]
    fn carried_over_subdirectories_stay_in_the_old_directory_too() {
        let root = std::env::temp_dir().join(format!("corefocus-carry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (from, to) = (root.join("from"), root.join("to"));
        std::fs::create_dir_all(from.join("resume/deeper")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("resume/state.json"), "s").unwrap();
        std::fs::write(from.join("resume/deeper/x"), "x").unwrap();
        std::fs::write(from.join("kept.txt"), "old").unwrap();
        std::fs::write(to.join("kept.txt"), "new").unwrap();
        carry_over_extras(&from, &to).unwrap();
        for dir in [&from, &to] {
            assert_eq!(
                std::fs::read_to_string(dir.join("resume/state.json")).unwrap(),
                "s"
            );
            assert_eq!(
                std::fs::read_to_string(dir.join("resume/deeper/x")).unwrap(),
                "x"
            );
        }
        assert_eq!(std::fs::read_to_string(to.join("kept.txt")).unwrap(), "new");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
