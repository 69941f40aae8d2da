//! Key rows (key, type, default, meaning) and what the loader asks of them:
//! is this path a leaf and of which TOML shape, a table of keys, an array of
//! tables. Each section declares its own rows; [`super::keys`] chains them.

use toml::Value;

/// One accepted key: a row of the README's config table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// Dotted path. `<name>` and `<model>` stand for any table name, a
    /// `[]` suffix for an array of tables (`budgets[].name`).
    pub key: &'static str,
    /// The type column.
    pub ty: Type,
    /// The default column, as the README shows it.
    pub default: &'static str,
    /// The meaning column.
    pub meaning: &'static str,
}

impl Key {
    /// A row; `const` so that sections can declare their rows as statics.
    pub const fn new(
        key: &'static str,
        ty: Type,
        default: &'static str,
        meaning: &'static str,
    ) -> Key {
        Key {
            key,
            ty,
            default,
            meaning,
        }
    }

    /// The top-level key this row sits under (`budgets` for `budgets[].name`).
    pub fn top(&self) -> &'static str {
        self.key.split(['.', '[']).next().unwrap_or(self.key)
    }
}

/// The type column of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    SocketAddr,
    /// A socket address, or `""` for off.
    SocketAddrOrOff,
    Path,
    Str,
    Duration,
    Url,
    Dialect,
    Usd,
    Decimal,
    Scope,
    Fractions,
    Strings,
    Integer,
    Bool,
    Size,
}

impl Type {
    /// As the README's type column writes it.
    pub fn name(self) -> &'static str {
        match self {
            Type::SocketAddr => "socket address",
            Type::SocketAddrOrOff => "socket address or \"\"",
            Type::Path => "path",
            Type::Str => "string",
            Type::Duration => "duration",
            Type::Url => "url",
            Type::Dialect => "dialect",
            Type::Usd => "decimal USD",
            Type::Decimal => "decimal",
            Type::Scope => "scope",
            Type::Fractions => "list of fractions",
            Type::Strings => "list of strings",
            Type::Integer => "integer",
            Type::Bool => "bool",
            Type::Size => "size",
        }
    }

    /// The TOML shape its values take.
    pub(super) fn kind(self) -> Kind {
        match self {
            Type::SocketAddr
            | Type::SocketAddrOrOff
            | Type::Path
            | Type::Str
            | Type::Duration
            | Type::Url
            | Type::Dialect
            | Type::Usd
            | Type::Decimal
            | Type::Scope => Kind::Str,
            Type::Fractions => Kind::Fractions,
            Type::Strings => Kind::Strings,
            Type::Integer => Kind::Int,
            Type::Bool => Kind::Bool,
            Type::Size => Kind::Size,
        }
    }
}

/// The TOML shape a key's type takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Int,
    Bool,
    /// An integer or a string.
    Size,
    /// An array of numbers.
    Fractions,
    /// An array of strings.
    Strings,
}

impl Kind {
    pub(super) fn accepts(self, v: &Value) -> bool {
        matches!(
            (self, v),
            (Kind::Str, Value::String(_))
                | (Kind::Int, Value::Integer(_))
                | (Kind::Bool, Value::Boolean(_))
                | (Kind::Size, Value::Integer(_) | Value::String(_))
        ) || matches!((self, v), (Kind::Fractions, Value::Array(a))
            if a.iter().all(|x| matches!(x, Value::Float(_) | Value::Integer(_))))
            || matches!((self, v), (Kind::Strings, Value::Array(a))
            if a.iter().all(Value::is_str))
    }

    pub(super) fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::Size => "an integer or a size string such as \"32MiB\"",
            Kind::Fractions => "an array of numbers such as [0.5, 0.8]",
            Kind::Strings => "an array of strings such as [\"api.anthropic.com\"]",
        }
    }
}

/// Whether `path` is the key `pattern` (or, with `prefix_only`, a table
/// above it).
pub(super) fn pattern_matches(pattern: &str, path: &[String], prefix_only: bool) -> bool {
    let segs: Vec<&str> = pattern.split('.').collect();
    let len_ok = if prefix_only {
        segs.len() > path.len()
    } else {
        segs.len() == path.len()
    };
    len_ok
        && segs
            .iter()
            .zip(path)
            .all(|(p, s)| p.starts_with('<') || *p == s.as_str() || element_of(p, s))
}

/// Whether path segment `s` (`budgets[2]`) is an element of the array
/// pattern segment `p` (`budgets[]`).
fn element_of(p: &str, s: &str) -> bool {
    match (p.strip_suffix("[]"), s.strip_suffix(']')) {
        (Some(name), Some(rest)) => rest
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('['))
            .is_some_and(|idx| !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    }
}

/// The row of the leaf key at `path`, if it is one.
pub(super) fn leaf<'k>(keys: &'k [Key], path: &[String]) -> Option<&'k Key> {
    keys.iter().find(|k| pattern_matches(k.key, path, false))
}

/// Whether `path` is a table that holds known keys.
pub(super) fn is_known_table(keys: &[Key], path: &[String]) -> bool {
    keys.iter().any(|k| pattern_matches(k.key, path, true))
}

/// Whether `path` is an array of tables (`budgets` for `budgets[].name`).
pub(super) fn is_known_array(keys: &[Key], path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let array = format!("{last}[]");
    keys.iter().any(|k| {
        let segs: Vec<&str> = k.key.split('.').collect();
        segs.len() > path.len()
            && segs[parents.len()] == array
            && segs
                .iter()
                .zip(parents)
                .all(|(p, s)| p.starts_with('<') || *p == s.as_str() || element_of(p, s))
    })
}

/// Renders a key path as TOML would write it: bare segments as they are,
/// others quoted; a segment that a row spells `<model>` is always quoted
/// (`prices."gpt-4o"`), since model ids so often hold dots.
pub(super) fn render_key<S: AsRef<str>>(path: &[S]) -> String {
    let mut out = String::new();
    for (i, seg) in path.iter().enumerate() {
        let seg = seg.as_ref();
        if i > 0 {
            out.push('.');
        }
        let bare = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-[]".contains(&b));
        if bare && !is_model(path, i) {
            out.push_str(seg);
        } else {
            out.push('"');
            out.push_str(&seg.replace('\\', "\\\\").replace('"', "\\\""));
            out.push('"');
        }
    }
    out
}

/// Whether a row spells segment `i` of `path` (under the same top-level
/// key) as `<model>`.
fn is_model<S: AsRef<str>>(path: &[S], i: usize) -> bool {
    let Some(top) = path.first() else {
        return false;
    };
    super::keys().any(|k| k.top() == top.as_ref() && k.key.split('.').nth(i) == Some("<model>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rendering() {
        assert_eq!(
            render_key(&["providers", "anthropic", "base_url"]),
            "providers.anthropic.base_url"
        );
        assert_eq!(
            render_key(&["prices", "gpt-4o", "output"]),
            "prices.\"gpt-4o\".output"
        );
        assert_eq!(render_key(&["providers", "a.b"]), "providers.\"a.b\"");
        assert_eq!(render_key(&["x", ""]), "x.\"\"");
    }

    #[test]
    fn tops() {
        let top = |k| Key::new(k, Type::Str, "-", "-").top();
        assert_eq!(top("listen"), "listen");
        assert_eq!(top("budgets[].name"), "budgets");
        assert_eq!(top("providers.<name>.hosts"), "providers");
    }
}
