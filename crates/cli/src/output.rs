//! What the command prints: data on stdout (text or `--json`), one-line errors on
//! stderr, and the exit codes.

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use crate::args::Global;

/// Exit code of a command that failed.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of a command used wrongly (clap's usage errors exit 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `fsck` when damage remains.
pub const EXIT_DAMAGED: u8 = 3;
/// Exit code when standard output was closed early, as a shell reports SIGPIPE.
pub const EXIT_BROKEN_PIPE: u8 = 141;
/// Exit code of an import stopped by SIGINT or SIGTERM (rolled back).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a command failed, and its exit code.
#[derive(Debug)]
pub struct Failure {
    error: anyhow::Error,
    code: u8,
}

impl Failure {
    /// A usage error (exit 2).
    pub fn usage(message: impl Display) -> Failure {
        Failure {
            error: anyhow::anyhow!("{message}"),
            code: EXIT_USAGE,
        }
    }

    /// An error with its own exit code.
    pub fn with_code(error: anyhow::Error, code: u8) -> Failure {
        Failure { error, code }
    }

    /// Prints `plies: <what>: <where>: <why>` and returns the exit code.
    pub fn report(self) -> ExitCode {
        // A reader that went away (`plies ls | head`) is not an error to report.
        let broken_pipe = self.error.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            return ExitCode::from(EXIT_BROKEN_PIPE);
        }
        let _ = writeln!(std::io::stderr().lock(), "plies: {}", one_line(&self.error));
        ExitCode::from(self.code)
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            error: e.into(),
            code: EXIT_ERROR,
        }
    }
}

/// The error and its causes joined by `: `, each made [`printable`].
pub fn one_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| printable(&cause.to_string()))
        .collect::<Vec<_>>()
        .join(": ")
}

/// A message part fit for one line of a terminal: control characters are
/// escaped (`\x1b`, `\n`, `\u{9b}`), the replacement character (what a parser
/// quoting raw bytes leaves) becomes `?`, and a part longer than 300 characters
/// is cut.
pub fn printable(part: &str) -> String {
    const MAX: usize = 300;
    let mut out = String::with_capacity(part.len().min(MAX));
    for c in part.chars().take(MAX) {
        match c {
            char::REPLACEMENT_CHARACTER => out.push('?'),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if part.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// Where a command's output goes, and in which form.
pub struct Out {
    /// `--json`.
    pub json: bool,
    /// `-q`.
    pub quiet: bool,
}

impl Out {
    /// From the global flags.
    pub fn new(g: &Global) -> Out {
        Out {
            json: g.json,
            quiet: g.quiet,
        }
    }

    /// Prints `value` as pretty JSON on stdout.
    pub fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, value)?;
        writeln!(stdout)?;
        Ok(())
    }

    /// Prints a line of data on stdout.
    pub fn line(&self, line: impl Display) -> anyhow::Result<()> {
        writeln!(std::io::stdout().lock(), "{line}")?;
        Ok(())
    }

    /// Prints a line of commentary on stdout, unless `-q`.
    pub fn note(&self, line: impl Display) -> anyhow::Result<()> {
        if !self.quiet {
            self.line(line)?;
        }
        Ok(())
    }

    /// Prints rows as an aligned two-column table.
    pub fn table(&self, rows: &[(String, String)]) -> anyhow::Result<()> {
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut stdout = std::io::stdout().lock();
        for (k, v) in rows {
            writeln!(stdout, "{k:<width$}  {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_joined_and_printable() {
        let inner = std::io::Error::other("bad\u{fffd}\nbytes\u{1b}[2J\u{9b}");
        let e = anyhow::Error::new(inner).context("reading x");
        assert_eq!(one_line(&e), "reading x: bad?\\nbytes\\x1b[2J\\u{9b}");
        let long = anyhow::anyhow!("{}", "a".repeat(400));
        assert_eq!(one_line(&long).chars().count(), 301);
    }
}
