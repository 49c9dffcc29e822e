//! `ENGINE_*` environment variables: one table, parsed in one place.

use engine_core::{EngineConfig, Error, ErrorKind, Op, Result};

/// Every variable `Engine::from_env()` reads, with what it accepts. The README's table lists
/// the same rows; a test keeps them in step.
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "ENGINE_BACKEND",
        "`auto` (default): the best available backend; a backend name; or a comma list tried in order",
    ),
    (
        "ENGINE_QUEUE_DEPTH",
        "requests in flight at most, 1 to 32768 (default 128)",
    ),
    (
        "ENGINE_THREADS",
        "worker threads for backends that use them, 0 to 1024; 0 (default) lets the backend decide",
    ),
    (
        "ENGINE_STRICT",
        "`1`/`true` rejects overlapping requests in flight with an Overlap error; `0`/`false` (default) does not",
    ),
];

/// What to try, in what order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The built-in backends in the default order, falling back when one is unavailable.
    Auto,
    /// Exactly these names, in this order.
    List(Vec<String>),
}

/// The parsed settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which backends to try.
    pub choice: Choice,
    /// The engine configuration.
    pub config: EngineConfig,
    /// The text of the request, for the report (for example `ENGINE_BACKEND=auto`).
    pub requested: String,
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, Op::Setup, message)
}

fn number(name: &str, value: &str, max: usize, min: usize) -> Result<usize> {
    match value.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(format!(
            "{name}={value:?} is not valid: expected a whole number from {min} to {max}"
        ))),
    }
}

impl Settings {
    /// Parses settings from `ENGINE_*` variables. `valid_backends` are the names
    /// `ENGINE_BACKEND` may use besides `auto`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for an unknown `ENGINE_*` variable or value; the message
    /// names the valid ones.
    pub fn parse<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
        valid_backends: &[&str],
    ) -> Result<Settings> {
        let mut settings = Settings {
            choice: Choice::Auto,
            config: EngineConfig::default(),
            requested: "ENGINE_BACKEND=auto".to_string(),
        };
        for (name, value) in vars {
            match name {
                "ENGINE_BACKEND" => {
                    settings.requested = format!("ENGINE_BACKEND={value}");
                    settings.choice = parse_backend(value, valid_backends)?;
                }
                "ENGINE_QUEUE_DEPTH" => {
                    settings.config.queue_depth =
                        number(name, value, EngineConfig::QUEUE_DEPTH_MAX, 1)?;
                }
                "ENGINE_THREADS" => {
                    settings.config.threads = number(name, value, EngineConfig::THREADS_MAX, 0)?;
                }
                "ENGINE_STRICT" => {
                    settings.config.strict = match value.trim() {
                        "1" | "true" => true,
                        "0" | "false" | "" => false,
                        _ => {
                            return Err(invalid(format!(
                                "ENGINE_STRICT={value:?} is not valid: use 1, true, 0 or false"
                            )))
                        }
                    };
                }
                other if other.starts_with("ENGINE_") => {
                    let known: Vec<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
                    return Err(invalid(format!(
                        "unknown variable {other}; the engine reads {}",
                        known.join(", ")
                    )));
                }
                _ => {}
            }
        }
        Ok(settings)
    }
}

fn parse_backend(value: &str, valid: &[&str]) -> Result<Choice> {
    let value = value.trim();
    if value.is_empty() || value == "auto" {
        return Ok(Choice::Auto);
    }
    let mut names = Vec::new();
    for name in value.split(',').map(str::trim) {
        if !valid.contains(&name) {
            return Err(invalid(format!(
                "ENGINE_BACKEND={value:?}: unknown backend {name:?}; valid backends are auto, {}",
                valid.join(", ")
            )));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(Choice::List(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[&str] = &["uring", "aio", "sync"];

    #[test]
    fn defaults_without_variables() {
        let s = Settings::parse([], VALID).expect("valid");
        assert_eq!(s.choice, Choice::Auto);
        assert_eq!(s.config.queue_depth, EngineConfig::QUEUE_DEPTH_DEFAULT);
        assert!(!s.config.strict);
    }

    #[test]
    fn lists_names_and_tuning() {
        let vars = [
            ("ENGINE_BACKEND", "aio, sync"),
            ("ENGINE_QUEUE_DEPTH", "64"),
            ("ENGINE_THREADS", "8"),
            ("ENGINE_STRICT", "true"),
            ("PATH", "/bin"),
        ];
        let s = Settings::parse(vars, VALID).expect("valid");
        assert_eq!(s.choice, Choice::List(vec!["aio".into(), "sync".into()]));
        assert_eq!(
            (s.config.queue_depth, s.config.threads, s.config.strict),
            (64, 8, true)
        );
    }

    #[test]
    fn unknown_values_name_the_valid_ones() {
        let e = Settings::parse([("ENGINE_BACKEND", "nonsense")], VALID).expect_err("bad");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .contains("valid backends are auto, uring, aio, sync"),
            "{e}"
        );
        let e = Settings::parse([("ENGINE_QUEUE_DEPTH", "0")], VALID).expect_err("bad");
        assert!(e.to_string().contains("from 1 to 32768"), "{e}");
        let e = Settings::parse([("ENGINE_THREADS", "many")], VALID).expect_err("bad");
        assert!(e.to_string().contains("ENGINE_THREADS"), "{e}");
        let e = Settings::parse([("ENGINE_STRICT", "yes")], VALID).expect_err("bad");
        assert!(e.to_string().contains("use 1, true, 0 or false"), "{e}");
        let e = Settings::parse([("ENGINE_QUEUE_DEPT", "8")], VALID).expect_err("typo");
        assert!(e.to_string().contains("ENGINE_QUEUE_DEPTH"), "{e}");
    }
}
