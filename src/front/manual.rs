//! `ssm-proxy completions SHELL` and `ssm-proxy man`: generated from the clap definitions, so
//! they cannot drift from the real options.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut Cli::command(), "ssm-proxy", &mut out);
    quiet_on_broken_pipe(out.flush())
}

/// Prints the man page (roff) on stdout, e.g.
/// `ssm-proxy man > /usr/local/share/man/man1/ssm-proxy.1`.
pub fn man() -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    let written = clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .and_then(|()| out.flush());
    quiet_on_broken_pipe(written)
}

/// A reader that went away (`ssm-proxy man | head`) is not an error.
pub(crate) fn quiet_on_broken_pipe(r: std::io::Result<()>) -> anyhow::Result<u8> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}
