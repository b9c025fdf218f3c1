//! The `ssm-proxy` executable: parse arguments, set up logging, run the mode, and turn the
//! result into one stderr line and an exit status.

use clap::CommandFactory;
use clap::Parser;
use ssm_proxy::cli::{AwsArgs, Cli, Command};
use ssm_proxy::front::report::Failure;
use ssm_proxy::{front, logging};

fn main() {
    // `aws ssm start-session` runs us as session-manager-plugin: decided before clap (§1.3).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(invocation) = front::plugin::detect(&argv) {
        std::process::exit(plugin_main(invocation));
    }
    let cli = match checked_cli(argv) {
        Ok(cli) => cli,
        Err(status) => std::process::exit(status),
    };
    logging::init(&cli.log);
    #[cfg(feature = "sim")]
    let multi_thread = matches!(cli.command, Some(Command::Sim(_)));
    #[cfg(not(feature = "sim"))]
    let multi_thread = false;
    let runtime = match runtime(multi_thread) {
        Ok(rt) => rt,
        Err(e) => std::process::exit(i32::from(fail(&anyhow::anyhow!(
            "cannot start the async runtime: {e}"
        )))),
    };
    let result = runtime.block_on(run_command(cli));
    let code = result.unwrap_or_else(|e| fail(&e));
    // Blocked stdin/stdout threads must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(10));
    std::process::exit(i32::from(code))
}

/// The parsed command line, or the exit status of its one-line usage error.
fn checked_cli(argv: Vec<std::ffi::OsString>) -> Result<Cli, i32> {
    #[cfg(not(feature = "sim"))]
    if argv.get(1).is_some_and(|a| a == "sim")
        && argv
            .get(2)
            .is_none_or(|a| a.to_string_lossy().starts_with('-'))
    {
        let failure = Failure::usage(
            "this ssm-proxy was built without the simulator (--no-default-features): \
             build it with the default features to run ssm-proxy sim",
        );
        return Err(i32::from(failure.report()));
    }
    let cli = parse(argv).map_err(usage_error)?;
    if let (Some(target), Some(command)) = (&cli.target, &cli.command) {
        let name = command_name(command);
        let failure = Failure::usage(format!(
            "TARGET {target:?} given before the {name} subcommand: write \
             ssm-proxy {name} … (its TARGET comes after it); see ssm-proxy {name} --help"
        ));
        return Err(i32::from(failure.report()));
    }
    Ok(cli)
}

/// The async runtime: one thread for a session (stdin and stdout have their own), all cores
/// for the simulator.
fn runtime(multi_thread: bool) -> std::io::Result<tokio::runtime::Runtime> {
    match multi_thread {
        true => tokio::runtime::Builder::new_multi_thread(),
        false => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()
}

/// Runs the mode the command line chose.
async fn run_command(cli: Cli) -> anyhow::Result<u8> {
    // AWS options given before the subcommand count for it; --reason goes to StartSession.
    let outer = cli.aws.clone();
    match cli.command {
        #[cfg(feature = "sim")]
        Some(Command::Sim(args)) => front::sim::run(*args).await,
        Some(Command::Forward(args)) => {
            let aws = AwsArgs {
                reason: args.resume.reason.clone(),
                ..args.aws.clone().or(&outer)
            };
            front::forward::run(args, aws).await
        }
        Some(Command::SshConfig(args)) => {
            front::ssh_config::run(&args, &args.aws.clone().or(&outer))
        }
        Some(Command::Doctor(args)) => {
            let aws = args.aws.clone().or(&outer);
            front::doctor::run(args, aws).await
        }
        Some(Command::Completions(args)) => front::manual::completions(args.shell),
        Some(Command::Man) => front::manual::man(),
        Some(Command::Shell(args)) => {
            let aws = AwsArgs {
                reason: args.resume.reason.clone(),
                ..args.aws.clone().or(&outer)
            };
            front::shell::run(args, aws).await
        }
        None => {
            let mut cli = cli;
            cli.aws.reason = cli.resume.reason.clone();
            front::proxy::run(cli).await
        }
    }
}

/// The session-manager-plugin entry; returns the exit status.
fn plugin_main(invocation: front::plugin::Invocation) -> i32 {
    use front::plugin::Invocation;
    let args = match invocation {
        Invocation::Version => {
            // The AWS CLI runs this before every session: print the bare number, nothing else.
            println!("{}", front::plugin::PLUGIN_VERSION);
            return 0;
        }
        Invocation::Installed => {
            print!("{}", front::plugin::installed_message());
            return 0;
        }
        Invocation::Unknown(first) => {
            // As the official plugin: on stdout, status 0.
            print!("{}", front::plugin::unknown_message(&first));
            return 0;
        }
        Invocation::Session(args) => args,
    };
    let response = match args.response_env() {
        None => args.response.clone(),
        Some(name) => {
            let value = std::env::var(name).unwrap_or_default();
            // SAFETY: nothing else runs yet (no runtime, no logging, no other thread), so no
            // one reads the environment concurrently. Unset so the token reaches no child (§1.3).
            #[allow(unsafe_code)]
            unsafe {
                std::env::remove_var(name)
            };
            value
        }
    };
    logging::init(&ssm_proxy::cli::LogArgs {
        verbose: 0,
        quiet: false,
        log_file: std::env::var_os("SSM_PROXY_LOG_FILE").map(Into::into),
    });
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(e) => {
            return i32::from(fail(&anyhow::anyhow!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let result = runtime.block_on(front::plugin::run(args, &response));
    let code = result.unwrap_or_else(|e| fail(&e));
    runtime.shutdown_timeout(std::time::Duration::from_millis(10));
    i32::from(code)
}

/// The one stderr line and the exit status of a failure (front::report decides both).
fn fail(err: &anyhow::Error) -> u8 {
    Failure::of(err).report()
}

/// Parses the arguments. In ProxyCommand position a host named like a subcommand
/// (`ssm-proxy doctor 22` from `ssm-proxy %h %p`) is a TARGET: the last two words being a
/// subcommand name and a port, with no `--` before them, are read as TARGET PORT.
fn parse(argv: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    let parsed = Cli::try_parse_from(&argv);
    let n = argv.len();
    let words: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap_or("")).collect();
    let host_like = n >= 3
        && !words[..n - 2].contains(&"--")
        && words[n - 1].parse::<u16>().is_ok_and(|p| p > 0)
        && Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == words[n - 2]);
    let subcommand_ran = match &parsed {
        Ok(cli) => cli.command.is_some(),
        Err(_) => true,
    };
    if host_like && subcommand_ran {
        let mut as_target = argv.clone();
        as_target.insert(n - 2, "--".into());
        if let Ok(cli) = Cli::try_parse_from(&as_target)
            && cli.command.is_none()
        {
            return Ok(cli);
        }
    }
    parsed
}

/// A subcommand's name as typed.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Forward(_) => "forward",
        #[cfg(feature = "sim")]
        Command::Sim(_) => "sim",
        Command::SshConfig(_) => "ssh-config",
        Command::Doctor(_) => "doctor",
        Command::Completions(_) => "completions",
        Command::Man => "man",
        Command::Shell(_) => "shell",
    }
}

fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return 0;
    }
    let text = e.render().to_string();
    i32::from(Failure::usage(usage_line(&text)).report())
}

/// clap's rendered error as one line: its first paragraph (which names what is missing or
/// wrong) and the help to read, e.g. `ssm-proxy forward --help` for a subcommand.
fn usage_line(rendered: &str) -> String {
    let what: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let what = what.join(" ");
    let what = what.trim_start_matches("error: ").trim_end_matches(':');
    let command: Vec<&str> = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .unwrap_or("ssm-proxy")
        .split_whitespace()
        .take_while(|w| !w.starts_with(['[', '<', '-']))
        .collect();
    let command = if command.is_empty() {
        "ssm-proxy".to_owned()
    } else {
        command.join(" ")
    };
    format!("{what}; see {command} --help")
}

#[cfg(test)]
mod tests {
    use super::usage_line;

    #[test]
    fn usage_errors_keep_what_is_missing_and_name_the_subcommand() {
        let rendered = "error: the following required arguments were not provided:\n  <TARGET>\n  \
                        --local <[BIND:]LPORT:[HOST:]RPORT>\n\nUsage: ssm-proxy forward --local \
                        <[BIND:]LPORT:[HOST:]RPORT> <TARGET>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line(rendered),
            "the following required arguments were not provided: <TARGET> --local \
             <[BIND:]LPORT:[HOST:]RPORT>; see ssm-proxy forward --help"
        );
        assert_eq!(
            usage_line(
                "error: unexpected argument '--bogus' found\n\nUsage: ssm-proxy [OPTIONS]\n"
            ),
            "unexpected argument '--bogus' found; see ssm-proxy --help"
        );
    }
}
