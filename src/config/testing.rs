//! Helpers of the config tests: configs from TOML text and an env map.

use std::collections::BTreeMap;

use super::{parse_str, Config, Flags};

pub(super) fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The config of `toml` with `vars`; panics with the problems otherwise.
pub(super) fn ok(toml: &str, vars: &[(&str, &str)]) -> Config {
    match parse_str(toml, &env(vars), &Flags::default()) {
        Ok(c) => c,
        Err(e) => panic!("config rejected:\n{e}"),
    }
}

/// The problems of `toml` with `vars`, as displayed.
pub(super) fn problems(toml: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match parse_str(toml, &env(vars), &Flags::default()) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}
