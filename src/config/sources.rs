//! Where configuration comes from: a file, the environment, flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Where configuration comes from.
#[derive(Clone, Default)]
pub struct Sources {
    /// The file from `--config`, else `TOLLGATE_CONFIG`; `None` = defaults.
    pub file: Option<PathBuf>,
    /// The process environment (also where `api_key_env` variables are read).
    pub env: BTreeMap<String, String>,
    /// Command-line flags, highest precedence.
    pub flags: Flags,
}

impl fmt::Debug for Sources {
    /// Lists environment variable names only: their values may be keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("file", &self.file)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("flags", &self.flags)
            .finish()
    }
}

/// Config keys that have a command-line flag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--listen`
    pub listen: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<String>,
}

impl Flags {
    /// The flags given, as (key, flag, value).
    pub(super) fn set(&self) -> Vec<(&'static str, &'static str, &str)> {
        [
            ("listen", "--listen", &self.listen),
            ("admin_listen", "--admin-listen", &self.admin_listen),
            ("data_dir", "--data-dir", &self.data_dir),
        ]
        .into_iter()
        .filter_map(|(key, flag, v)| Some((key, flag, v.as_deref()?)))
        .collect()
    }
}
