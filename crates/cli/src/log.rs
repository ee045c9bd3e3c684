//! Where the libraries' `tracing` events go in the `plies` command: one line
//! each on stderr, `LEVEL message field=value …`, as `tracing-subscriber`'s fmt
//! layer prints them without time and target.
//!
//! A command is one short process, so this subscriber keeps no span state and
//! costs nothing to set up: the fmt layer's registry took 60–90 µs of every
//! `plies mount` before it did anything (its slab pages touched for the first
//! time). Spans are accepted and ignored; no plies crate opens one.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Subscriber;
use tracing::{Event, Level, Metadata};

/// Prints events up to `max` on stderr, the level in colour when `ansi`.
pub struct Stderr {
    max: Level,
    ansi: bool,
}

impl Stderr {
    /// Installs it as the process's subscriber; a second call changes nothing.
    pub fn install(max: Level, ansi: bool) {
        let _ = tracing::subscriber::set_global_default(Stderr { max, ansi });
    }

    /// The line `event` prints as, without its newline.
    fn line(&self, event: &Event<'_>) -> String {
        let level = *event.metadata().level();
        let mut line = String::with_capacity(128);
        let (colour, name) = match level {
            Level::ERROR => ("31", "ERROR"),
            Level::WARN => ("33", " WARN"),
            Level::INFO => ("32", " INFO"),
            Level::DEBUG => ("34", "DEBUG"),
            Level::TRACE => ("35", "TRACE"),
        };
        if self.ansi {
            let _ = write!(line, "\x1b[{colour}m{name}\x1b[0m");
        } else {
            line.push_str(name);
        }
        let mut fields = Fields {
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        line.push(' ');
        line.push_str(&fields.message);
        if !fields.rest.is_empty() {
            if !fields.message.is_empty() {
                line.push(' ');
            }
            line.push_str(&fields.rest);
        }
        line
    }
}

/// An event's message, and its other fields as `name=value` words.
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.rest.is_empty() {
                self.rest.push(' ');
            }
            let _ = write!(self.rest, "{}={value:?}", field.name());
        }
    }
}

impl Subscriber for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.max))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = self.line(event);
        line.push('\n');
        // Nowhere to report a failed write to stderr.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects the lines a `Stderr` subscriber would print.
    struct Lines(std::sync::Mutex<Vec<String>>, Stderr);

    impl Subscriber for Lines {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            self.1.enabled(metadata)
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            self.1.new_span(span)
        }
        fn record(&self, _span: &Id, _values: &Record<'_>) {}
        fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let line = self.1.line(event);
            self.0.lock().unwrap().push(line);
        }
        fn enter(&self, _span: &Id) {}
        fn exit(&self, _span: &Id) {}
    }

    fn lines(max: Level, ansi: bool, f: impl FnOnce()) -> Vec<String> {
        let lines = std::sync::Arc::new(Lines(
            std::sync::Mutex::new(Vec::new()),
            Stderr { max, ansi },
        ));
        tracing::subscriber::with_default(lines.clone(), f);
        lines.0.lock().unwrap().clone()
    }

    #[test]
    fn prints_level_message_and_fields_as_fmt_does() {
        let got = lines(Level::WARN, false, || {
            let e = std::io::Error::other("disk on fire");
            tracing::warn!(layer = "abc", error = %e, "could not remove merged");
            tracing::error!("plain {}", 7);
            tracing::info!("not printed at WARN");
        });
        assert_eq!(
            got,
            [
                " WARN could not remove merged layer=\"abc\" error=disk on fire",
                "ERROR plain 7",
            ]
        );
    }

    #[test]
    fn colours_the_level_only_on_a_terminal() {
        let got = lines(Level::TRACE, true, || {
            let span = tracing::debug_span!("ignored", n = 1);
            let _inside = span.enter();
            tracing::debug!(n = 2);
        });
        assert_eq!(got, ["\x1b[34mDEBUG\x1b[0m n=2"]);
    }
}
