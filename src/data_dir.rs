//! The data dir holds the usage ledger, the journal and cached answers
//! (prompts and completions): it is private to the user tollgate runs as.
//!
//! Created 0700 before anything is opened in it, which keeps every file
//! inside private whatever modes sled and the journal create them with;
//! the proxy runs under umask 077 so those files are 0600 as well, and
//! files left from an earlier run (or an older version) are made 0600 at
//! start. The data dir's own mode is set explicitly, not left to the umask.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the data dir and every directory in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

/// Why the data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data_dir {} is writable by {who} (mode {mode:o}): whoever can write there can \
         rewrite the usage ledger or plant cached answers; run `chmod 700 {}` or choose \
         another data_dir",
        path.display(),
        path.display()
    )]
    Writable {
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("data_dir {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("data_dir {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What [`prepare`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Created, 0700.
    Created,
    /// There already; `readable_by_others`: group or others may list and
    /// read it (worth a warning, not a refusal: e.g. a backup agent).
    Existing { readable_by_others: bool },
}

/// Sets the process umask to 077, so that what sled and the journal
/// create while running (segments, snapshots) is private too, even in a
/// data dir the operator left readable. Call before opening any store.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Creates `dir` (and missing parents) 0700, or checks an existing one:
/// refused when group- or world-writable.
pub fn prepare(dir: &Path) -> Result<Found, DataDirError> {
    let io_err = |source| DataDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(DataDirError::NotADirectory(dir.to_path_buf())),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => Some("its group and others"),
                (true, false) => Some("its group"),
                (false, true) => Some("others"),
                (false, false) => None,
            };
            if let Some(who) = who {
                return Err(DataDirError::Writable {
                    path: dir.to_path_buf(),
                    who,
                    mode,
                });
            }
            Ok(Found::Existing {
                readable_by_others: mode & 0o044 != 0,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io_err)?;
            // The umask may have taken bits off; set the mode itself.
            fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(io_err)?;
            Ok(Found::Created)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Makes every file below `dir` 0600 and every directory 0700 (`dir`
/// itself is left as [`prepare`] found it); symlinks are not followed.
/// Returns how many entries it changed.
pub fn restrict_contents(dir: &Path) -> Result<usize, DataDirError> {
    let mut changed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let io_err = |source| DataDirError::Io {
            path: d.clone(),
            source,
        };
        for entry in fs::read_dir(&d).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let path = entry.path();
            let meta = entry.metadata().map_err(io_err)?;
            let want = if meta.is_dir() {
                pending.push(path.clone());
                DIR_MODE
            } else if meta.is_file() {
                FILE_MODE
            } else {
                continue;
            };
            if meta.permissions().mode() & 0o7777 != want {
                fs::set_permissions(&path, Permissions::from_mode(want)).map_err(|source| {
                    DataDirError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    }

    #[test]
    fn a_new_dir_is_private_and_an_existing_one_checked() -> Result<(), Box<dyn std::error::Error>>
    {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("x").join("data");
        assert_eq!(prepare(&dir)?, Found::Created);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(
            prepare(&dir)?,
            Found::Existing {
                readable_by_others: false
            }
        );
        fs::set_permissions(&dir, Permissions::from_mode(0o750))?;
        assert_eq!(
            prepare(&dir)?,
            Found::Existing {
                readable_by_others: true
            }
        );
        for (bits, who) in [
            (0o770, "its group"),
            (0o702, "others"),
            (0o777, "its group and others"),
        ] {
            fs::set_permissions(&dir, Permissions::from_mode(bits))?;
            match prepare(&dir) {
                Err(DataDirError::Writable { who: w, .. }) => assert_eq!(w, who),
                other => return Err(format!("{bits:o}: {other:?}").into()),
            }
        }
        let file = tmp.path().join("f");
        fs::write(&file, "")?;
        assert!(matches!(
            prepare(&file),
            Err(DataDirError::NotADirectory(_))
        ));
        Ok(())
    }

    #[test]
    fn contents_are_made_private() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        fs::create_dir(dir.join("sub"))?;
        fs::write(dir.join("sub").join("a"), "")?;
        fs::write(dir.join("b"), "")?;
        fs::set_permissions(dir.join("sub"), Permissions::from_mode(0o755))?;
        fs::set_permissions(dir.join("sub").join("a"), Permissions::from_mode(0o644))?;
        fs::set_permissions(dir.join("b"), Permissions::from_mode(0o600))?;
        assert_eq!(restrict_contents(dir)?, 2);
        assert_eq!(mode(&dir.join("sub")), 0o700);
        assert_eq!(mode(&dir.join("sub").join("a")), 0o600);
        assert_eq!(restrict_contents(dir)?, 0);
        Ok(())
    }
}
