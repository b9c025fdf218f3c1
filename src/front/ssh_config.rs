//! `ssm-proxy ssh-config`: a ready `Host` block for `~/.ssh/config` that runs this very
//! executable as the user invoked it (the bare name or a symlink on PATH stay as typed, so an
//! upgrade of what they point to keeps working), with the profile, region and options given.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{AwsArgs, SshConfigArgs, UsageError};
use crate::os::{SSH_SHARES_CONNECTIONS, proxy_command_word};

/// Prints the block on stdout.
pub fn run(args: &SshConfigArgs, aws: &AwsArgs) -> anyhow::Result<u8> {
    if args.reuse && !SSH_SHARES_CONNECTIONS {
        return Err(UsageError(
            "--reuse needs ssh's connection sharing (ControlMaster), which Windows OpenSSH does \
             not have: drop --reuse (each connection then starts its own session)"
                .into(),
        )
        .into());
    }
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the path of this executable: {e}"))?;
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let exe = invoked_as(Path::new(&argv0), &path, &exe);
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(render(&exe, args, aws).as_bytes())
        .and_then(|()| out.flush());
    crate::front::manual::quiet_on_broken_pipe(written)
}

/// How to name this executable in the block: `argv0` as typed when it is the same file as
/// `exe` — a bare name only if PATH finds this executable under it, a path (made absolute, not
/// resolved) if it leads here — and otherwise `exe` itself.
pub fn invoked_as(argv0: &Path, path: &std::ffi::OsStr, exe: &Path) -> PathBuf {
    let same = |p: &Path| match (p.canonicalize(), exe.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let bare = argv0.components().count() == 1 && !argv0.is_absolute();
    if bare {
        let found = std::env::split_paths(path)
            .map(|dir| dir.join(argv0))
            .find(|p| p.is_file());
        if found.as_deref().is_some_and(same) {
            return argv0.to_owned();
        }
    } else if !argv0.as_os_str().is_empty() {
        let absolute = std::env::current_dir()
            .map(|d| d.join(argv0))
            .unwrap_or_else(|_| argv0.to_owned());
        if same(&absolute) {
            return absolute;
        }
    }
    exe.to_owned()
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
    if let Some(template) = &args.reason {
        // ssh expands the template's % tokens: quoted, but its % not doubled.
        words.push("--reason".into());
        words.push(proxy_command_word(template).replace("%%", "%"));
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
            reason: Some("%r@%h".into()),
            aws: aws_none(),
        };
        let aws = AwsArgs {
            profile: Some("prod".into()),
            region: Some("eu-west-1".into()),
            endpoint_url: None,
            ssmmessages_endpoint: None,
            no_cache: true,
            reason: None,
        };
        let text = render(Path::new("/opt/my tools/ssm-proxy"), &args, &aws);
        assert!(
            text.contains(
                "Host web-*\n    ProxyCommand '/opt/my tools/ssm-proxy' --profile prod \
                 --region eu-west-1 --no-cache --send-key --user %r --reason %r@%h %h %p\n"
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
                reason: None,
                aws: aws_none(),
            },
            &aws_none(),
        );
        assert!(plain.ends_with("Host i-* mi-*\n    ProxyCommand /usr/bin/ssm-proxy %h %p\n"));
    }

    fn aws_none() -> AwsArgs {
        AwsArgs {
            profile: None,
            region: None,
            endpoint_url: None,
            ssmmessages_endpoint: None,
            no_cache: false,
            reason: None,
        }
    }

    #[test]
    fn names_the_executable_as_invoked() {
        let dir = std::env::temp_dir().join(format!("ssm-proxy-invoked-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real = dir.join("ssm-proxy-real");
        std::fs::write(&real, b"").unwrap();
        let link = bin.join("ssm-proxy");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), &bin]).unwrap();
        // The bare name PATH finds, and a symlink by its own path, stay as typed.
        assert_eq!(
            invoked_as(Path::new("ssm-proxy"), &path, &real),
            Path::new("ssm-proxy")
        );
        assert_eq!(invoked_as(&link, &path, &real), link);
        // A name PATH does not lead here, or another file, falls back to the executable.
        assert_eq!(
            invoked_as(Path::new("ssm-proxy"), "/nonexistent".as_ref(), &real),
            real
        );
        assert_eq!(invoked_as(Path::new("/bin/sh"), &path, &real), real);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reuse_adds_connection_sharing() {
        let args = SshConfigArgs {
            patterns: vec![],
            send_key: false,
            alias: false,
            reuse: true,
            reason: None,
            aws: aws_none(),
        };
        let text = render(Path::new("/usr/bin/ssm-proxy"), &args, &aws_none());
        assert!(
            text.ends_with(
                "Host i-* mi-*\n    ProxyCommand /usr/bin/ssm-proxy %h %p\n    ControlMaster auto\n    \
                 ControlPath ~/.ssh/ssm-proxy-%C\n    ControlPersist 10m\n"
            ),
            "{text}"
        );
    }
}
