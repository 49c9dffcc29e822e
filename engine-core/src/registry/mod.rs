//! The plugin registry: each backend has a name, a probe that says whether it can run here
//! (and if not, why and what to do), and a constructor. A [`SelectionReport`] records every
//! attempt so a person can see why a backend was or was not chosen.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::DynBackend;
use crate::config::EngineConfig;
use crate::error::{Error, ErrorKind, Op, Result};

pub mod uring;

/// Why a backend cannot run here, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// The errno the probe saw, if any.
    pub errno: Option<i32>,
    /// The cause, for people (for example "io_uring disabled by sysctl
    /// kernel.io_uring_disabled=2").
    pub cause: String,
    /// What to do about it.
    pub remedy: String,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cause)?;
        if let Some(errno) = self.errno {
            write!(f, " ({})", std::io::Error::from_raw_os_error(errno))?;
        }
        if !self.remedy.is_empty() {
            write!(f, "; remedy: {}", self.remedy)?;
        }
        Ok(())
    }
}

/// The answer of a backend's probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The backend can run; the text says what was found.
    Available(String),
    /// The backend cannot run here.
    Unavailable(Diagnosis),
}

/// A backend that can be chosen by name at run time.
pub trait Plugin: Send + Sync {
    /// The name used in `ENGINE_BACKEND` and in reports; lower case, no commas.
    fn name(&self) -> &'static str;

    /// Says whether the backend can run here, without side effects that outlive the call.
    fn probe(&self, config: &EngineConfig) -> Probe;

    /// Builds the engine.
    ///
    /// # Errors
    ///
    /// The setup error; callers record it in the report.
    fn create(&self, config: &EngineConfig) -> Result<Box<dyn DynBackend>>;
}

static PLUGINS: Mutex<Vec<Arc<dyn Plugin>>> = Mutex::new(Vec::new());

/// Registers a third-party backend so `ENGINE_BACKEND=<name>` can choose it.
///
/// # Errors
///
/// [`ErrorKind::InvalidInput`] when the name is empty, contains a comma or whitespace, or is
/// already registered.
pub fn register(plugin: Arc<dyn Plugin>) -> Result<()> {
    let name = plugin.name();
    if name.is_empty() || name.contains(',') || name.contains(char::is_whitespace) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            Op::Setup,
            format!("plugin name {name:?} must be non-empty without commas or spaces"),
        ));
    }
    let mut plugins = PLUGINS.lock().unwrap_or_else(PoisonError::into_inner);
    if plugins.iter().any(|p| p.name() == name) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            Op::Setup,
            format!("a plugin named {name:?} is already registered"),
        ));
    }
    plugins.push(plugin);
    Ok(())
}

/// Finds a registered plugin by name.
pub fn plugin(name: &str) -> Option<Arc<dyn Plugin>> {
    let plugins = PLUGINS.lock().unwrap_or_else(PoisonError::into_inner);
    plugins.iter().find(|p| p.name() == name).cloned()
}

/// The names of every registered plugin, in registration order.
pub fn plugin_names() -> Vec<&'static str> {
    let plugins = PLUGINS.lock().unwrap_or_else(PoisonError::into_inner);
    plugins.iter().map(|p| p.name()).collect()
}

/// What happened to one candidate backend during selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Probed available and built; this is the engine in use.
    Chosen(String),
    /// The probe said it cannot run here.
    Unavailable(Diagnosis),
    /// The probe said yes but building it failed.
    Failed(String),
    /// Not compiled into this build (its cargo feature is off).
    NotCompiled(String),
}

/// One candidate tried during selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The backend's name.
    pub backend: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Every backend tried, in order, what each probe found, and what was chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectionReport {
    /// What was asked for (for example `ENGINE_BACKEND=auto`).
    pub requested: String,
    /// The candidates, in the order tried.
    pub attempts: Vec<Attempt>,
    /// The chosen backend's name.
    pub chosen: Option<String>,
    /// What the engine noticed after it was chosen that a person should know (for example a
    /// device without NOWAIT support), one sentence each.
    pub observations: Vec<String>,
}

impl SelectionReport {
    /// An empty report for the request `requested`.
    pub fn new(requested: impl Into<String>) -> SelectionReport {
        SelectionReport {
            requested: requested.into(),
            attempts: Vec::new(),
            chosen: None,
            observations: Vec::new(),
        }
    }

    /// Records an attempt, and the choice when it was chosen.
    pub fn push(&mut self, backend: &str, outcome: Outcome) {
        if matches!(outcome, Outcome::Chosen(_)) {
            self.chosen = Some(backend.to_string());
        }
        tracing::info!(backend, outcome = ?outcome, "engine selection");
        self.attempts.push(Attempt {
            backend: backend.to_string(),
            outcome,
        });
    }
}

impl fmt::Display for SelectionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "engine selection for {}:", self.requested)?;
        for (i, attempt) in self.attempts.iter().enumerate() {
            let (verdict, detail) = match &attempt.outcome {
                Outcome::Chosen(detail) => ("chosen", detail.clone()),
                Outcome::Unavailable(diagnosis) => ("unavailable", diagnosis.to_string()),
                Outcome::Failed(why) => ("failed", why.clone()),
                Outcome::NotCompiled(why) => ("not compiled", why.clone()),
            };
            writeln!(f, "  {}. {}: {verdict}: {detail}", i + 1, attempt.backend)?;
        }
        match &self.chosen {
            Some(name) => write!(f, "  => using {name}")?,
            None => write!(f, "  => no backend could be used")?,
        }
        for note in &self.observations {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_every_attempt_and_the_choice() {
        let mut report = SelectionReport::new("ENGINE_BACKEND=auto");
        report.push(
            "uring",
            Outcome::Unavailable(Diagnosis {
                errno: Some(libc::EPERM),
                cause: "io_uring_setup refused".into(),
                remedy: "allow io_uring in the seccomp profile".into(),
            }),
        );
        report.push("sync", Outcome::Chosen("8 threads".into()));
        let text = report.to_string();
        assert!(
            text.contains("1. uring: unavailable: io_uring_setup refused"),
            "{text}"
        );
        assert!(text.contains("remedy: allow io_uring"), "{text}");
        assert!(text.contains("2. sync: chosen"), "{text}");
        assert!(text.ends_with("=> using sync"), "{text}");
        assert_eq!(report.chosen.as_deref(), Some("sync"));
    }
}
