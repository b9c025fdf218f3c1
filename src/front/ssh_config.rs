//! `ssm-proxy ssh-config`: a ready `Host` block for `~/.ssh/config` that runs this very
//! executable (absolute path), with the profile, region and options given.

use std::io::Write;
use std::path::Path;

use crate::cli::{AwsArgs, SshConfigArgs};
use crate::os::proxy_command_word;

/// Prints the block on stdout.
pub fn run(args: &SshConfigArgs, aws: &AwsArgs) -> anyhow::Result<u8> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the path of this executable: {e}"))?;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(render(&exe, args, aws).as_bytes())
        .and_then(|()| out.flush());
    crate::front::manual::quiet_on_broken_pipe(written)
}

/// The block for `exe`.
pub fn render(exe: &Path, args: &SshConfigArgs, aws: &AwsArgs) -> String {
    let patterns = if args.patterns.is_empty() {
        "i-* mi-*".to_owned()
    } else {
        args.patterns.join(" ")
    };
    let mut words = vec![proxy_command_word(&exe.display().to_string())];
    let mut flag = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            words.push(name.to_owned());
            words.push(proxy_command_word(v));
        }
    };
    flag("--profile", &aws.profile);
    flag("--region", &aws.region);
    flag("--endpoint-url", &aws.endpoint_url);
    flag("--ssmmessages-endpoint", &aws.ssmmessages_endpoint);
    if aws.no_cache {
        words.push("--no-cache".into());
    }
    if args.alias {
        words.push("--alias".into());
    }
    if args.send_key {
        words.extend(["--send-key".into(), "--user".into(), "%r".into()]);
    }
    words.extend(["%h".into(), "%p".into()]);
    let mut text = format!(
        "# ssm-proxy {}: ssh through AWS Systems Manager Session Manager.\n\
         # ssh takes the first value it finds for each option: keep more specific Host blocks\n\
         # above this one. Targets: instance ids, Name tag values, tag:KEY=VALUE.\n",
        env!("CARGO_PKG_VERSION")
    );
    if args.alias {
        text.push_str("# Aliases: ssh USER@TARGET.PROFILE.REGION (PROFILE `default` keeps the ambient one).\n");
    }
    if args.send_key {
        text.push_str(
            "# --send-key pushes ~/.ssh/id_ed25519.pub (or id_ecdsa.pub, id_rsa.pub) with EC2\n\
             # Instance Connect before each connection; ssh then logs in with that key.\n",
        );
    }
    if args.reuse {
        text.push_str(
            "# ssh connections to one host share the first one's session (one StartSession per\n\
             # host); it stays 10 minutes after the last one ends. `ssh -O exit HOST` ends it.\n",
        );
    }
    text.push_str(&format!(
        "Host {patterns}\n    ProxyCommand {}\n",
        words.join(" ")
    ));
    if args.reuse {
        text.push_str(REUSE);
    }
    text
}

/// ssh's connection sharing; `%C` (a hash of the connection) keeps the socket path short.
const REUSE: &str =
    "    ControlMaster auto\n    ControlPath ~/.ssh/ssm-proxy-%C\n    ControlPersist 10m\n";

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn renders_flags_in_order() {
        let args = SshConfigArgs {
            patterns: vec!["web-*".into()],
            send_key: true,
            alias: false,
            reuse: false,
        };
        let aws = AwsArgs {
            profile: Some("prod".into()),
            region: Some("eu-west-1".into()),
            endpoint_url: None,
            ssmmessages_endpoint: None,
            no_cache: true,
        };
        let text = render(Path::new("/opt/my tools/ssm-proxy"), &args, &aws);
        assert!(
            text.contains(
                "Host web-*\n    ProxyCommand '/opt/my tools/ssm-proxy' --profile prod \
                 --region eu-west-1 --no-cache --send-key --user %r %h %p\n"
            ),
            "{text}"
        );
        let plain = render(
            Path::new("/usr/bin/ssm-proxy"),
            &SshConfigArgs {
                patterns: vec![],
                send_key: false,
                alias: false,
                reuse: false,
            },
            &AwsArgs {
                profile: None,
                region: None,
                endpoint_url: None,
                ssmmessages_endpoint: None,
                no_cache: false,
            },
        );
        assert!(plain.ends_with("Host i-* mi-*\n    ProxyCommand /usr/bin/ssm-proxy %h %p\n"));
    }

    #[test]
    fn reuse_adds_connection_sharing() {
        let args = SshConfigArgs {
            patterns: vec![],
            send_key: false,
            alias: false,
            reuse: true,
        };
        let aws = AwsArgs {
            profile: None,
            region: None,
            endpoint_url: None,
            ssmmessages_endpoint: None,
            no_cache: false,
        };
        let text = render(Path::new("/usr/bin/ssm-proxy"), &args, &aws);
        assert!(
            text.ends_with(
                "Host i-* mi-*\n    ProxyCommand /usr/bin/ssm-proxy %h %p\n    ControlMaster auto\n    \
                 ControlPath ~/.ssh/ssm-proxy-%C\n    ControlPersist 10m\n"
            ),
            "{text}"
        );
    }
}
