//! `ENGINE_*` environment variables: one table, parsed in one place.

use engine_core::{EngineConfig, Error, ErrorKind, Op, Result};

/// Every variable `Engine::from_env()` reads, with what it accepts. The README's table lists
/// the same rows; a test keeps them in step.
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "ENGINE_BACKEND",
        "`auto` (default): the best available backend; a backend name; or a comma list tried in order, in which `auto` stands for the built-in order",
    ),
    (
        "ENGINE_QUEUE_DEPTH",
        "requests in flight at most, 1 to 32768 (default 128)",
    ),
    (
        "ENGINE_THREADS",
        "worker threads of the sync backend, 0 to 1024; 0 (default) lets it decide; `inline` runs each request on the submitting thread; io_uring and AIO run no workers and say so in their capabilities",
    ),
    (
        "ENGINE_STRICT",
        "`1`/`true` rejects overlapping requests in flight with an Overlap error; `0`/`false` (default) does not",
    ),
    (
        "ENGINE_REGISTER_BUFFERS",
        "size of the page pool io_uring registers as fixed buffers, bytes with optional k/m/g (default 32m, at most 1g); `0` registers none",
    ),
    (
        "ENGINE_SQPOLL",
        "io_uring kernel submission polling: idle time in milliseconds before the poller sleeps; `0` or unset (default) is off",
    ),
    (
        "ENGINE_IOPOLL",
        "`1` polls io_uring completions; only O_DIRECT files on devices whose queue polls, and syncs are refused; `0` (default) is off",
    ),
    (
        "ENGINE_RESTRICTED",
        "`1` restricts io_uring rings to the opcodes the engine uses (read, write and their vectored and fixed forms, fsync, fallocate, ftruncate, nop) on registered files (R_DISABLED + REGISTER_RESTRICTIONS); `0` (default) is off",
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
        Settings::parse_with(vars, valid_backends, &crate::BUILTIN_BACKENDS)
    }

    /// As [`Settings::parse`], with `auto` standing for `auto_order` inside a list.
    fn parse_with<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
        valid_backends: &[&str],
        auto_order: &[&str],
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
                    settings.choice = parse_backend(value, valid_backends, auto_order)?;
                }
                "ENGINE_QUEUE_DEPTH" => {
                    settings.config.queue_depth =
                        number(name, value, EngineConfig::QUEUE_DEPTH_MAX, 1)?;
                }
                "ENGINE_THREADS" if value.trim() == "inline" => settings.config.inline = true,
                "ENGINE_THREADS" => {
                    settings.config.threads = number(name, value, EngineConfig::THREADS_MAX, 0)?;
                }
                "ENGINE_STRICT" => settings.config.strict = flag(name, value)?,
                "ENGINE_IOPOLL" => settings.config.iopoll = flag(name, value)?,
                "ENGINE_RESTRICTED" => settings.config.restricted = flag(name, value)?,
                "ENGINE_SQPOLL" => {
                    let idle = number(name, value, 60_000, 0)?;
                    settings.config.sqpoll_idle_ms = (idle > 0).then_some(idle as u32);
                }
                "ENGINE_REGISTER_BUFFERS" => {
                    settings.config.register_buffers_bytes = bytes(name, value)?
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

fn flag(name: &str, value: &str) -> Result<bool> {
    match value.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" | "" => Ok(false),
        _ => Err(invalid(format!(
            "{name}={value:?} is not valid: use 1, true, 0 or false"
        ))),
    }
}

/// A byte count with an optional k, m or g suffix (powers of 1024), at most 1 GiB.
fn bytes(name: &str, value: &str) -> Result<usize> {
    let text = value.trim().to_ascii_lowercase();
    let (digits, shift) = match text.strip_suffix(['k', 'm', 'g']) {
        Some(digits) => (
            digits,
            match text.as_bytes()[text.len() - 1] {
                b'k' => 10,
                b'm' => 20,
                _ => 30,
            },
        ),
        None => (text.as_str(), 0),
    };
    let parsed = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n <= 1 << 30);
    match parsed {
        Some(n) => Ok(n as usize),
        None => Err(invalid(format!(
            "{name}={value:?} is not valid: expected bytes with an optional k, m or g suffix, at most 1g"
        ))),
    }
}

/// `auto`, one name, or a comma list in which `auto` stands for the built-in order (so
/// `sync,auto` tries sync first, then the others).
fn parse_backend(value: &str, valid: &[&str], auto_order: &[&str]) -> Result<Choice> {
    let value = value.trim();
    if value.is_empty() || value == "auto" {
        return Ok(Choice::Auto);
    }
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        let expanded: &[&str] = if name == "auto" {
            auto_order
        } else if valid.contains(&name) {
            std::slice::from_ref(&name)
        } else {
            return Err(invalid(format!(
                "ENGINE_BACKEND={value:?}: unknown backend {name:?}; valid backends are auto, {}",
                valid.join(", ")
            )));
        };
        for name in expanded {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
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
            ("ENGINE_REGISTER_BUFFERS", "8m"),
            ("ENGINE_SQPOLL", "100"),
            ("ENGINE_IOPOLL", "0"),
            ("ENGINE_RESTRICTED", "1"),
            ("PATH", "/bin"),
        ];
        let s = Settings::parse(vars, VALID).expect("valid");
        assert_eq!(s.config.register_buffers_bytes, 8 << 20);
        assert_eq!(s.config.sqpoll_idle_ms, Some(100));
        assert!(!s.config.iopoll && s.config.restricted);
        assert_eq!(s.choice, Choice::List(vec!["aio".into(), "sync".into()]));
        assert_eq!(
            (s.config.queue_depth, s.config.threads, s.config.strict),
            (64, 8, true)
        );
    }

    #[test]
    fn auto_inside_a_list_is_the_builtin_order() {
        let s = Settings::parse_with([("ENGINE_BACKEND", "auto,sync")], VALID, VALID)
            .expect("auto is valid in a list");
        assert_eq!(
            s.choice,
            Choice::List(vec!["uring".into(), "aio".into(), "sync".into()])
        );
        let s =
            Settings::parse_with([("ENGINE_BACKEND", "sync, auto")], VALID, VALID).expect("valid");
        assert_eq!(
            s.choice,
            Choice::List(vec!["sync".into(), "uring".into(), "aio".into()]),
            "sync first, then the rest of the built-in order"
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
        let e = Settings::parse([("ENGINE_REGISTER_BUFFERS", "2g")], VALID).expect_err("bad");
        assert!(e.to_string().contains("at most 1g"), "{e}");
        let e = Settings::parse([("ENGINE_SQPOLL", "-1")], VALID).expect_err("bad");
        assert!(e.to_string().contains("ENGINE_SQPOLL"), "{e}");
        let e = Settings::parse([("ENGINE_STRICT", "yes")], VALID).expect_err("bad");
        assert!(e.to_string().contains("use 1, true, 0 or false"), "{e}");
        let e = Settings::parse([("ENGINE_QUEUE_DEPT", "8")], VALID).expect_err("typo");
        assert!(e.to_string().contains("ENGINE_QUEUE_DEPTH"), "{e}");
    }
}
