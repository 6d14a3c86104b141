//! Configuration errors. Each names the key path (`listeners.store.allow[0]`),
//! the offending value when it is not a secret, and what would be right.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem at one key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not fit the schema (unknown key, wrong type, bad syntax).
    #[error("{}", render_syntax(file.as_deref(), path, message, *location))]
    Syntax { file: Option<PathBuf>, path: String, message: String, location: Option<(usize, usize)> },
    /// The YAML fits the schema, but values are wrong; every problem is listed.
    #[error("{}", render_issues(file.as_deref(), issues))]
    Invalid { file: Option<PathBuf>, issues: Vec<Issue> },
}

impl ConfigError {
    pub(super) fn in_file(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Syntax { path: p, message, location, .. } => {
                ConfigError::Syntax { file: Some(path.to_owned()), path: p, message, location }
            }
            ConfigError::Invalid { issues, .. } => ConfigError::Invalid { file: Some(path.to_owned()), issues },
            other => other,
        }
    }

    /// The individual problems, for tests and `check`.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            ConfigError::Read { .. } => vec![Issue { path: String::new(), message: self.to_string() }],
            ConfigError::Syntax { path, message, .. } => vec![Issue { path: path.clone(), message: message.clone() }],
            ConfigError::Invalid { issues, .. } => issues.clone(),
        }
    }
}

fn render_syntax(file: Option<&Path>, path: &str, message: &str, location: Option<(usize, usize)>) -> String {
    let mut out = String::new();
    if let Some(file) = file {
        out.push_str(&file.display().to_string());
        if let Some((line, col)) = location {
            out.push_str(&format!(":{line}:{col}"));
        }
        out.push_str(": ");
    } else if let Some((line, col)) = location {
        out.push_str(&format!("line {line} column {col}: "));
    }
    if !path.is_empty() {
        out.push_str(path);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

fn render_issues(file: Option<&Path>, issues: &[Issue]) -> String {
    let prefix = file.map(|f| format!("{}: ", f.display())).unwrap_or_default();
    issues.iter().map(|i| format!("{prefix}{i}")).collect::<Vec<_>>().join("\n")
}

/// serde_yaml appends " at line L column C"; the location is printed once, in front.
pub(super) fn clean_serde_message(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}
