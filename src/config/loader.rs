//! Layering: built-in defaults < file < environment < flags, merged as TOML
//! trees and checked against the key rows; every problem is collected, and
//! the ones about a key set by the environment or a flag name that source
//! (`listen (from env TOLLGATE_LISTEN)`).
//!
//! The loader knows no section's keys: it is handed the rows, the pairs of
//! keys that replace each other, and the defaults layer.
//!
//! Hand-written rather than on `figment`: figment's `Env` provider cannot
//! report a malformed or conflicting variable, types numbers before serde
//! sees them (so `TOLLGATE_DEFAULT_ACCOUNT=123` would fail as a string),
//! names only "environment variable(s)" as a value's source, and serde
//! stops at the first error, so the key check below would stay anyway.

use std::collections::BTreeMap;
use std::path::Path;

use toml::{Table, Value};

use super::schema::{self, render_key, Key, Kind};
use super::service_links;
use super::{ConfigError, Problem};

/// What the loader is told about the keys.
pub(super) struct Schema<'a> {
    /// Every accepted key.
    pub keys: &'a [Key],
    /// Pairs of keys of one table that replace each other across layers.
    pub replacing: &'a [(&'a str, &'a str)],
    /// Variables with this prefix are keys (`TOLLGATE_`).
    pub env_prefix: &'a str,
    /// Variables with the prefix that are not keys (`TOLLGATE_CONFIG`).
    pub non_key_env: &'a [&'a str],
    /// Longer prefixes that belong to another program's config (the
    /// control endpoint's `TOLLGATE_CONTROL_` for the sidecar), skipped.
    pub foreign_prefixes: &'a [&'a str],
}

/// The layers, lowest first.
pub(super) struct Layers<'a> {
    /// Built-in values that are more than a scalar default (the built-in
    /// providers); scalar defaults are applied by the sections.
    pub defaults: Table,
    /// (label, TOML text) of the file, if any.
    pub file: Option<(&'a str, &'a str)>,
    /// The process environment; only `TOLLGATE_*` variables are layered.
    pub env: &'a BTreeMap<String, String>,
    /// (key, flag, value) of each flag given.
    pub flags: &'a [(&'a str, &'a str, &'a str)],
}

/// Where each key set by the environment or a flag came from (rendered key
/// → "env TOLLGATE_X" / "flag --listen").
type Origins = BTreeMap<String, String>;

/// Reads a config file; a file that cannot be read is a problem.
pub(super) fn read_file(path: &Path) -> Result<String, Problem> {
    std::fs::read_to_string(path).map_err(|e| {
        Problem::new(
            path.display().to_string(),
            format!("cannot read the config file: {e}"),
        )
    })
}

/// Layers `layers`, checks the merged tree against `schema` and hands what
/// remains to `validate`; then names the source of each problem's key.
pub(super) fn load<T>(
    layers: Layers<'_>,
    schema: &Schema<'_>,
    mut problems: Vec<Problem>,
    validate: impl FnOnce(Table, &mut Vec<Problem>) -> Option<T>,
) -> Result<T, ConfigError> {
    let mut origins = Origins::new();
    let mut tree = layers.defaults;
    if let Some((label, text)) = layers.file {
        match toml::from_str::<Table>(text) {
            Ok(t) => merge(&mut tree, t, schema, &mut Vec::new()),
            Err(e) => problems.push(Problem::new(label, format!("not valid TOML: {e}"))),
        }
    }
    let env_layer = env_layer(layers.env, schema, &mut origins, &mut problems);
    merge(&mut tree, env_layer, schema, &mut Vec::new());
    let flags_layer = flags_layer(layers.flags, &mut origins);
    merge(&mut tree, flags_layer, schema, &mut Vec::new());
    check_tree(&mut tree, schema.keys, &mut Vec::new(), &mut problems);
    let value = validate(tree, &mut problems);
    for p in &mut problems {
        if p.key.contains(" (from ") {
            continue;
        }
        if let Some(origin) = origin_of(&origins, &p.key) {
            p.key = format!("{} (from {origin})", p.key);
        }
    }
    match value {
        Some(value) if problems.is_empty() => Ok(value),
        _ => Err(ConfigError { problems }),
    }
}

/// The source of `key`, or of the closest table above it, if the
/// environment or a flag set it.
fn origin_of<'a>(origins: &'a Origins, key: &str) -> Option<&'a str> {
    origins
        .iter()
        .filter(|(k, _)| {
            key == k.as_str() || (key.starts_with(k.as_str()) && key[k.len()..].starts_with('.'))
        })
        .max_by_key(|(k, _)| k.len())
        .or_else(|| {
            // A table that only the environment filled in.
            origins
                .iter()
                .find(|(k, _)| k.starts_with(key) && k[key.len()..].starts_with('.'))
        })
        .map(|(_, v)| v.as_str())
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else
/// replaces. Of a pair of replacing keys, the layer that sets one drops the
/// other from the layers below.
fn merge(base: &mut Table, overlay: Table, schema: &Schema<'_>, path: &mut Vec<String>) {
    for (a, b) in schema.replacing {
        let (Some((table, a)), Some((_, b))) = (a.rsplit_once('.'), b.rsplit_once('.')) else {
            continue;
        };
        if !schema::pattern_matches(table, path, false) {
            continue;
        }
        for (set, drop) in [(a, b), (b, a)] {
            if overlay.contains_key(set) && !overlay.contains_key(drop) {
                base.remove(drop);
            }
        }
    }
    for (k, v) in overlay {
        match v {
            Value::Table(o) => {
                if let Some(Value::Table(b)) = base.get_mut(&k) {
                    path.push(k);
                    merge(b, o, schema, path);
                    path.pop();
                } else {
                    base.insert(k, Value::Table(o));
                }
            }
            v => {
                base.insert(k, v);
            }
        }
    }
}

/// The schema's `TOLLGATE_*` variables as a TOML tree.
fn env_layer(
    env: &BTreeMap<String, String>,
    schema: &Schema<'_>,
    origins: &mut Origins,
    problems: &mut Vec<Problem>,
) -> Table {
    let keys = schema.keys;
    let prefix = schema.env_prefix;
    let mut layer = Table::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if schema.non_key_env.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let is_key = schema::leaf(keys, &path).is_some();
        if schema.foreign_prefixes.iter().any(|f| name.starts_with(f)) && !is_key {
            continue;
        }
        // Kubernetes puts these in for every Service of the namespace whose
        // name starts with `tollgate`: not the operator's, never a problem.
        if !is_key && service_links::is_service_link(name, raw) {
            continue;
        }
        if path.iter().any(String::is_empty) {
            problems.push(Problem::new(
                format!("env {name}"),
                format!("not a config variable name ({prefix}KEY, with __ between nested keys)"),
            ));
            continue;
        }
        let key = render_key(&path);
        let value = env_value(keys, &path, raw);
        match insert_path(&mut layer, &path, value) {
            Ok(()) => {
                origins.insert(key, format!("env {name}"));
            }
            Err(()) => problems.push(Problem::new(
                format!("{key} (from env {name})"),
                "conflicts with another TOLLGATE_ variable that sets a value above this key",
            )),
        }
    }
    layer
}

/// An environment value: TOML when it parses (`1000`, `true`), else the
/// string itself. Keys of a string type keep the string (unquoted if it was
/// written as a TOML string).
fn env_value(keys: &[Key], path: &[String], raw: &str) -> Value {
    let parsed = parse_toml_value(raw);
    let kind = schema::leaf(keys, path).map(|k| k.ty.kind());
    match (kind, parsed) {
        (Some(Kind::Str), Some(Value::String(s))) => Value::String(s),
        (Some(Kind::Str), _) | (_, None) => Value::String(raw.to_owned()),
        (_, Some(v)) => v,
    }
}

fn parse_toml_value(raw: &str) -> Option<Value> {
    let mut t = toml::from_str::<Table>(&format!("v = {raw}")).ok()?;
    if t.len() != 1 {
        return None;
    }
    t.remove("v")
}

/// Sets `path` in `table`, creating tables on the way; `Err` when a value
/// that is not a table is in the way.
fn insert_path(table: &mut Table, path: &[String], value: Value) -> Result<(), ()> {
    let Some((last, parents)) = path.split_last() else {
        return Err(());
    };
    let mut t = table;
    for seg in parents {
        let next = t
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        match next {
            Value::Table(inner) => t = inner,
            _ => return Err(()),
        }
    }
    match t.get(last) {
        Some(Value::Table(_)) => Err(()),
        _ => {
            t.insert(last.clone(), value);
            Ok(())
        }
    }
}

fn flags_layer(flags: &[(&str, &str, &str)], origins: &mut Origins) -> Table {
    let mut layer = Table::new();
    for (key, flag, value) in flags {
        layer.insert((*key).into(), Value::String((*value).into()));
        origins.insert((*key).into(), format!("flag {flag}"));
    }
    layer
}

/// Reports (and removes) every unknown key and every value of the wrong TOML
/// type, so that what remains deserializes into the sections' raw types.
fn check_tree(
    table: &mut Table,
    keys: &[Key],
    path: &mut Vec<String>,
    problems: &mut Vec<Problem>,
) {
    let names: Vec<String> = table.keys().cloned().collect();
    for k in names {
        path.push(k.clone());
        let kind = schema::leaf(keys, path).map(|key| key.ty.kind());
        let keep = match (kind, table.get_mut(&k)) {
            (_, None) => true,
            (Some(kind), Some(v)) => {
                let ok = kind.accepts(v);
                if !ok {
                    problems.push(Problem::new(
                        render_key(path),
                        format!("expected {}, found {}", kind.expected(), v.type_str()),
                    ));
                }
                ok
            }
            (None, Some(v)) if schema::is_known_array(keys, path) => match v {
                Value::Array(items) => {
                    let name = path.pop().unwrap_or_default();
                    for (i, item) in items.iter_mut().enumerate() {
                        path.push(format!("{name}[{i}]"));
                        match item {
                            Value::Table(t) => check_tree(t, keys, path, problems),
                            other => problems.push(Problem::new(
                                render_key(path),
                                format!("expected a table, found {}", other.type_str()),
                            )),
                        }
                        path.pop();
                    }
                    path.push(name);
                    let ok = items.iter().all(Value::is_table);
                    ok
                }
                other => {
                    problems.push(Problem::new(
                        render_key(path),
                        format!(
                            "expected an array of tables ([[{}]] in the config file), found {}",
                            render_key(path),
                            other.type_str()
                        ),
                    ));
                    false
                }
            },
            (None, Some(v)) if schema::is_known_table(keys, path) => match v {
                Value::Table(t) => {
                    check_tree(t, keys, path, problems);
                    true
                }
                other => {
                    problems.push(Problem::new(
                        render_key(path),
                        format!("expected a table, found {}", other.type_str()),
                    ));
                    false
                }
            },
            (None, Some(_)) => {
                problems.push(Problem::new(render_key(path), "unknown key"));
                false
            }
        };
        if !keep {
            table.remove(&k);
        }
        path.pop();
    }
}
