//! The `ssm-proxy` executable: parse arguments, set up logging, run the mode, and turn the
//! result into one stderr line and an exit status.

use clap::Parser;
use ssm_proxy::cli::{Cli, Command};
use ssm_proxy::{front, logging};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(usage_error(e)),
    };
    logging::init(&cli.log);
    let multi_thread = matches!(cli.command, Some(Command::Sim(_)));
    let runtime = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        // One session needs one thread; stdin and stdout have their own.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => std::process::exit(i32::from(fail(&anyhow::anyhow!(
            "cannot start the async runtime: {e}"
        )))),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Sim(args)) => front::sim::run(args).await,
            None => front::proxy::run(cli).await,
        }
    });
    let code = result.unwrap_or_else(|e| fail(&e));
    // Blocked stdin/stdout threads must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(10));
    std::process::exit(i32::from(code))
}

fn fail(err: &anyhow::Error) -> u8 {
    eprintln!("ssm-proxy: {}", one_line(&format!("{err:#}")));
    err.chain()
        .find_map(|e| {
            e.downcast_ref::<ssm_proxy::aws::AwsError>()
                .map(|a| a.exit_code())
        })
        .or_else(|| {
            err.chain().find_map(
                |e| match e.downcast_ref::<ssm_proxy::transport::DriveError>() {
                    Some(ssm_proxy::transport::DriveError::Aws(a)) => Some(a.exit_code()),
                    _ => None,
                },
            )
        })
        .unwrap_or(1)
}

fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return 0;
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    eprintln!(
        "ssm-proxy: {}; see ssm-proxy --help",
        first.trim_start_matches("error: ")
    );
    2
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
