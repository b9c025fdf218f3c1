//! `ssm-proxy completions SHELL` and `ssm-proxy man`: generated from the clap definitions, so
//! they cannot drift from the real options.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::{Cli, EXAMPLES};

/// Options that exist for tests and tuning, not for users: left out of completions (clap's
/// generators list hidden options too).
const HIDDEN: [&str; 2] = ["--max-payload", "--dead-after"];

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<u8> {
    let script = completion_script(shell);
    let mut out = std::io::stdout().lock();
    quiet_on_broken_pipe(out.write_all(script.as_bytes()).and_then(|()| out.flush()))
}

/// The completion script for `shell`, without the hidden options.
pub fn completion_script(shell: clap_complete::Shell) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ssm-proxy", &mut buf);
    let text = String::from_utf8_lossy(&buf);
    // zsh writes `'--max-payload=[…]'`, fish `-l max-payload`: the bare name finds both.
    let hidden = |line: &str| {
        HIDDEN
            .iter()
            .any(|h| line.contains(h.trim_start_matches('-')))
    };
    match shell {
        // Options are words of `opts="…"` lists there; elsewhere one option per line.
        // clap_complete turns the `-` of `ssm-proxy` into its subcommand separator in the
        // case labels of subcommands but not where it sets `cmd`: no label ever matched.
        clap_complete::Shell::Bash => text
            .replace("ssm__subcmd__proxy", "ssm__proxy")
            .lines()
            .map(|l| match l.trim_start().starts_with("opts=") {
                true => l
                    .split(' ')
                    .filter(|w| !HIDDEN.contains(w))
                    .collect::<Vec<_>>()
                    .join(" "),
                false => l.to_owned(),
            })
            .map(|l| l + "\n")
            .collect(),
        _ => text
            .lines()
            .filter(|l| !hidden(l))
            .map(|l| format!("{l}\n"))
            .collect(),
    }
}

/// Prints the man page (roff) on stdout, e.g.
/// `ssm-proxy man > /usr/local/share/man/man1/ssm-proxy.1`.
pub fn man() -> anyhow::Result<u8> {
    let page = man_page()?;
    let mut out = std::io::stdout().lock();
    quiet_on_broken_pipe(out.write_all(page.as_bytes()).and_then(|()| out.flush()))
}

/// The whole page: clap_mangen's sections for the top level, then every subcommand with its
/// options (there are no separate pages to refer to), examples kept line by line, the
/// environment and the exit statuses.
pub fn man_page() -> std::io::Result<String> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut page = String::from_utf8_lossy(&out).into_owned();
    page.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        let usage = sub.clone().render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ");
        page.push_str(&format!(
            ".SS \"{}\"\n",
            escape(&format!("ssm-proxy {name}"))
        ));
        page.push_str(&format!(".B {}\n.PP\n", escape(usage)));
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            page.push_str(&format!("{}\n", escape(&about.to_string())));
        }
        let mut options = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut options)?;
        // Its options as a list under the subcommand, not a section of their own.
        let options = String::from_utf8_lossy(&options).replace(".SH OPTIONS\n", "");
        page.push_str(&options);
        if let Some(after) = sub.get_after_help() {
            page.push_str(&verbatim(&after.to_string()));
        }
    }
    // The help's closing "Exit status: …" sentence is the list below, in detail.
    let examples = EXAMPLES.split("Exit status:").next().unwrap_or(EXAMPLES);
    page.push_str(".SH EXAMPLES\n");
    page.push_str(&verbatim(examples.trim_start_matches("Examples:\n")));
    page.push_str(ENVIRONMENT);
    page.push_str(&flag_variables(&cmd));
    page.push_str(".SH \"EXIT STATUS\"\n");
    page.push_str(EXIT_STATUSES);
    page.push_str(&format!(".SH VERSION\nv{}\n", env!("CARGO_PKG_VERSION")));
    Ok(page)
}

/// Variables read besides the AWS SDK's own (roff).
const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBAWS_PROFILE\fR, \fBAWS_REGION\fR, \fBAWS_DEFAULT_REGION\fR, \fBAWS_CONFIG_FILE\fR, \fBAWS_SHARED_CREDENTIALS_FILE\fR
Profile, region and files, as for the AWS CLI (\-\-profile and \-\-region win).
.TP
\fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR
Credentials; otherwise the profile, SSO, web identity, container and instance metadata, in the AWS SDK's order.
.TP
\fBAWS_ENDPOINT_URL_SSM\fR, \fBAWS_ENDPOINT_URL\fR
SSM API endpoint (\-\-endpoint\-url wins).
.TP
\fBSSM_PROXY_SSMMESSAGES_ENDPOINT\fR
Data\-channel endpoint (\-\-ssmmessages\-endpoint wins).
.TP
\fBHTTPS_PROXY\fR, \fBHTTP_PROXY\fR, \fBNO_PROXY\fR, \fBAWS_CA_BUNDLE\fR
Proxy and extra trusted certificates, for the API and the data channel.
.TP
\fBSSM_PROXY_LOG\fR
Log filter in tracing's EnvFilter syntax, e.g. ssm_proxy=debug (overrides \-v and \-q).
"#;

/// The variables that stand in for flags, from the flags' own `env` (so a new setting's variable
/// is listed without touching this file): name, the flag it is the default of, and its help.
fn flag_variables(cmd: &clap::Command) -> String {
    let mut seen = std::collections::BTreeMap::new();
    let commands = std::iter::once(cmd).chain(cmd.get_subcommands());
    for arg in commands.flat_map(|c| c.get_arguments()) {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        seen.entry(var.to_string_lossy().into_owned())
            .or_insert_with(|| format!("Default of --{long}. {help}"));
    }
    seen.iter()
        .map(|(var, text)| format!(".TP\n\\fB{}\\fR\n{}\n", escape(var), escape(text)))
        .collect()
}

/// One line per exit status (roff).
const EXIT_STATUSES: &str = r#".TP
\fB0\fR
The session ended normally (shell: the remote command's status).
.TP
\fB1\fR
Any other failure, e.g. the service closed the session with an error.
.TP
\fB2\fR
Bad arguments.
.TP
\fB69\fR
Target, network or endpoint unavailable (offline target, unreachable endpoint, connection not resumed).
.TP
\fB77\fR
Credentials or permissions (none found, expired, access denied).
.TP
\fB78\fR
Configuration (no region, unknown profile, unknown document, bad parameters).
.TP
\fB128+N\fR
Ended by signal N (130 for Ctrl-C, 143 for SIGTERM).
"#;

/// Text kept line by line (no filling, no hyphenation), as examples must be.
fn verbatim(text: &str) -> String {
    let mut out = String::from(".PP\n.nf\n.na\n.nh\n");
    for line in text.trim_end().lines() {
        out.push_str(&escape(line));
        out.push('\n');
    }
    out.push_str(".fi\n.ad\n.hy\n");
    out
}

/// Escapes text for roff: backslashes, dashes, and a leading `.` or `'` (control characters).
fn escape(text: &str) -> String {
    let s = text.replace('\\', "\\e").replace('-', "\\-");
    match s.starts_with(['.', '\'']) {
        true => format!("\\&{s}"),
        false => s,
    }
}

/// A reader that went away (`ssm-proxy man | head`) is not an error.
pub(crate) fn quiet_on_broken_pipe(r: std::io::Result<()>) -> anyhow::Result<u8> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_man_page_lists_every_flag_variable_once() {
        let page = super::man_page().expect("man page");
        let env = page.split(".SH ENVIRONMENT").nth(1).expect("ENVIRONMENT");
        for var in [
            "SSM_PROXY_RESUME_TIMEOUT",
            "SSM_PROXY_DEAD_AFTER",
            "SSM_PROXY_EOF_WAIT",
            "SSM_PROXY_MAX_RATE",
            "SSM_PROXY_LOG_FILE",
            "SSM_PROXY_LOG",
        ] {
            let entry = format!("\\fB{var}\\fR\n");
            assert_eq!(env.matches(&entry).count(), 1, "{var} in:\n{env}");
        }
    }
}
