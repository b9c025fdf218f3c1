//! What the user typed as a target, turned into a managed-node id: ids pass as given; a `Name`
//! tag value (`web-1`) or `tag:KEY=VALUE` is looked up with SSM DescribeInstanceInformation,
//! which also says whether the agent is online; `ecs:CLUSTER/TASK[/CONTAINER]` with ECS. Answers
//! are cached on disk for a minute, so that `scp`, `rsync` and Ansible, which connect many times
//! in a row, pay for one lookup; the cache is its owner's alone (0600 in a 0700 directory,
//! never through a symlink) and keyed by a hash, so it names no access key id.
//!
//! Also the host-alias convention: with `--alias`, ssh's `%h` is `TARGET.PROFILE.REGION`, so one
//! `Host *.prod.eu-west-1` block serves every instance of an account and region.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::aws::{Aws, AwsError};
use crate::cli::UsageError;
use crate::os;

/// How long a resolved name stays valid in the cache.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// A target as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// `i-…`, `mi-…` (or anything else the service takes as is, such as `ecs:…`).
    Id(String),
    /// Value of the `Name` tag.
    Name(String),
    /// `tag:KEY=VALUE`.
    Tag {
        /// Tag key.
        key: String,
        /// Tag value.
        value: String,
    },
    /// `ecs:CLUSTER/TASK[/CONTAINER]`: a container of an ECS task; TASK is a task id or a
    /// service name (see [`super::ecs`]).
    Ecs {
        /// Cluster name.
        cluster: String,
        /// Task id or service name.
        task: String,
        /// Container name; may be omitted when the task has one.
        container: Option<String>,
    },
}

impl TargetSpec {
    /// Classifies `s`: `i-<hex>`/`mi-<hex>` and `ecs:…` are ids, `tag:KEY=VALUE` a tag, anything
    /// else a `Name` tag value.
    pub fn parse(s: &str) -> Result<Self, UsageError> {
        if s.is_empty() {
            return Err(UsageError(
                "the target is empty: give an instance id or name".into(),
            ));
        }
        if let Some(kv) = s.strip_prefix("tag:") {
            return match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok(Self::Tag {
                    key: k.to_owned(),
                    value: v.to_owned(),
                }),
                _ => Err(UsageError(format!(
                    "target {s:?} is not tag:KEY=VALUE: write e.g. tag:Role=web"
                ))),
            };
        }
        if let Some(ecs) = super::ecs::parse(s) {
            let (cluster, task, container) = ecs?;
            return Ok(Self::Ecs {
                cluster,
                task,
                container,
            });
        }
        if is_id(s) || s.starts_with("ecs:") {
            return Ok(Self::Id(s.to_owned()));
        }
        Ok(Self::Name(s.to_owned()))
    }

    /// How messages name it: `named "web-1"`, `tagged Role=web`.
    pub fn describe(&self) -> String {
        match self {
            Self::Id(id) => id.clone(),
            Self::Name(n) => format!("named {n:?}"),
            Self::Tag { key, value } => format!("tagged {key}={value}"),
            Self::Ecs {
                cluster,
                task,
                container,
            } => match container {
                Some(c) => format!("ecs:{cluster}/{task}/{c}"),
                None => format!("ecs:{cluster}/{task}"),
            },
        }
    }
}

/// Whether `s` is an EC2 instance id or a managed-node id.
pub fn is_id(s: &str) -> bool {
    let hex = |h: &str| h.len() >= 8 && h.chars().all(|c| c.is_ascii_hexdigit());
    s.strip_prefix("i-")
        .or_else(|| s.strip_prefix("mi-"))
        .is_some_and(hex)
}

/// A host alias `TARGET.PROFILE.REGION`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// Id, name or `tag:KEY=VALUE`.
    pub target: String,
    /// Profile; `None` for the label `default` (the ambient AWS_PROFILE or default chain).
    pub profile: Option<String>,
    /// Region.
    pub region: String,
}

impl Alias {
    /// Splits from the right, so that names with dots keep them: the last label is the region
    /// (it must look like one, e.g. `eu-west-1`), the one before it the profile, the rest the
    /// target.
    pub fn parse(host: &str) -> Result<Self, UsageError> {
        let bad = |why: &str| {
            UsageError(format!(
                "--alias: {host:?} is not TARGET.PROFILE.REGION ({why}): write e.g. \
                 web-1.prod.eu-west-1, or i-0123456789abcdef0.default.us-east-1"
            ))
        };
        let mut parts = host.rsplitn(3, '.');
        let region = parts.next().unwrap_or_default();
        let profile = parts.next().ok_or_else(|| bad("too few dots"))?;
        let target = parts.next().ok_or_else(|| bad("too few dots"))?;
        if !looks_like_region(region) {
            return Err(bad(&format!("{region:?} is not a region")));
        }
        if profile.is_empty() || target.is_empty() {
            return Err(bad("empty part"));
        }
        Ok(Self {
            target: target.to_owned(),
            profile: (profile != "default").then(|| profile.to_owned()),
            region: region.to_owned(),
        })
    }
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`, …
pub fn looks_like_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// A cache entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: String,
    /// Unix seconds when resolved.
    at: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `<cache dir>/ssm-proxy/targets.json` (e.g. `~/.cache/ssm-proxy/targets.json`).
pub fn cache_path() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("ssm-proxy").join("targets.json"))
}

fn read_cache(path: &Path) -> HashMap<String, Entry> {
    let mut text = Vec::new();
    let read = os::private_file(path, std::fs::OpenOptions::new().read(true))
        .and_then(|mut f| f.read_to_end(&mut text));
    read.ok()
        .and_then(|_| serde_json::from_slice(&text).ok())
        .unwrap_or_default()
}

/// Stores an entry; failures only cost a lookup next time.
fn write_cache(path: &Path, key: &str, id: &str) {
    let mut map = read_cache(path);
    let now = now_secs();
    map.retain(|_, e| now.saturating_sub(e.at) < CACHE_TTL.as_secs());
    map.insert(
        key.to_owned(),
        Entry {
            id: id.to_owned(),
            at: now,
        },
    );
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            os::private_dir(dir)?;
        }
        // Write then rename: concurrent ssh connections never read half a file. A leftover
        // of the same name (a crashed run, a planted link) is removed, not written through.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = os::private_file(
            &tmp,
            std::fs::OpenOptions::new().write(true).create_new(true),
        )?;
        file.write_all(&serde_json::to_vec(&map).unwrap_or_default())?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::debug!(error = %e, path = %path.display(), "could not write the target cache");
    }
}

/// A cache key as stored: its SHA-256, so the file names no access key id, profile or tag.
fn hashed(key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves a target to an id. Ids are returned as given, without any API call.
pub async fn resolve(
    aws: &Aws,
    spec: &TargetSpec,
    profile: Option<&str>,
    use_cache: bool,
) -> Result<String, AwsError> {
    let (key, value) = match spec {
        TargetSpec::Id(id) => return Ok(id.clone()),
        TargetSpec::Ecs {
            cluster,
            task,
            container,
        } => {
            let found = aws
                .ecs_container(cluster, task, container.as_deref())
                .await?;
            tracing::info!(target = %spec.describe(), id = %found.target(), "ECS container");
            return Ok(found.target());
        }
        TargetSpec::Name(n) => ("tag:Name".to_owned(), n.clone()),
        TargetSpec::Tag { key, value } => (format!("tag:{key}"), value.clone()),
    };
    // Whose view of the fleet this is: switching AWS_PROFILE or keys must not reuse another
    // account's answer.
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let who = profile.map_or_else(|| env("AWS_PROFILE"), str::to_owned);
    let cache_key = hashed(&format!(
        "{who}|{}|{}|{}|{key}={value}",
        env("AWS_ACCESS_KEY_ID"),
        aws.region(),
        aws.endpoint()
    ));
    let path = cache_path();
    if use_cache
        && let Some(path) = &path
        && let Some(e) = read_cache(path).get(&cache_key)
        && now_secs().saturating_sub(e.at) < CACHE_TTL.as_secs()
    {
        tracing::debug!(target = %spec.describe(), id = %e.id, "target from cache");
        return Ok(e.id.clone());
    }
    let nodes = aws.describe_nodes(&key, &[value]).await?;
    let what = spec.describe();
    let region = aws.region().to_owned();
    let node = match nodes.as_slice() {
        [] => return Err(AwsError::NoMatch { what, region }),
        [one] => one,
        many => {
            let list = many
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(AwsError::Ambiguous {
                what,
                region,
                count: many.len(),
                list,
            });
        }
    };
    if !node.online() {
        return Err(AwsError::Offline {
            id: node.id.clone(),
            what,
            status: node.ping_status.clone(),
            region,
        });
    }
    tracing::info!(target = %what, id = %node.id, agent = %node.agent_version, "target resolved");
    if let Some(path) = &path {
        write_cache(path, &cache_key, &node.id);
    }
    Ok(node.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_classify() {
        let p = |s| TargetSpec::parse(s).expect("parse");
        assert_eq!(
            p("i-0123456789abcdef0"),
            TargetSpec::Id("i-0123456789abcdef0".into())
        );
        assert_eq!(
            p("mi-0123456789abcdef0"),
            TargetSpec::Id("mi-0123456789abcdef0".into())
        );
        assert_eq!(p("i-am-web"), TargetSpec::Name("i-am-web".into()));
        assert_eq!(p("web-1"), TargetSpec::Name("web-1".into()));
        assert_eq!(
            p("tag:Role=web=1"),
            TargetSpec::Tag {
                key: "Role".into(),
                value: "web=1".into()
            }
        );
        assert!(TargetSpec::parse("tag:Role").is_err());
        assert!(TargetSpec::parse("tag:=x").is_err());
        assert!(TargetSpec::parse("").is_err());
    }

    #[test]
    fn aliases_split_from_the_right() {
        let a = Alias::parse("web-1.prod.eu-west-1").expect("alias");
        assert_eq!(
            (a.target.as_str(), a.profile.as_deref(), a.region.as_str()),
            ("web-1", Some("prod"), "eu-west-1")
        );
        let a = Alias::parse("web.example.com.default.us-gov-west-1").expect("dots");
        assert_eq!(
            (a.target.as_str(), a.profile, a.region.as_str()),
            ("web.example.com", None, "us-gov-west-1")
        );
        let a = Alias::parse("tag:Role=web.staging.ap-southeast-2").expect("tag");
        assert_eq!(a.target, "tag:Role=web");
        assert!(Alias::parse("web-1.prod").is_err());
        assert!(Alias::parse("web-1.prod.example").is_err());
        assert!(Alias::parse(".prod.eu-west-1").is_err());
    }

    #[test]
    fn regions_look_like_regions() {
        for r in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "cn-north-1",
            "il-central-1",
        ] {
            assert!(looks_like_region(r), "{r}");
        }
        for r in ["com", "prod", "us-east", "east-1", "US-EAST-1", "us--1"] {
            assert!(!looks_like_region(r), "{r}");
        }
    }
}
