//! DescribeInstanceInformation: which managed nodes carry a name or tag, and whether their agent
//! is connected. Only SSM is asked (no EC2 API): it knows the nodes Session Manager can reach.

use aws_sdk_ssm::types::InstanceInformationStringFilter;

use super::{Aws, AwsError};

/// Pages of 50 to read at most: more matches than this are reported as "at least 200".
const MAX_PAGES: usize = 4;

/// One managed node as DescribeInstanceInformation reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedNode {
    /// `i-…` or `mi-…`.
    pub id: String,
    /// The node's name: `Name` for hybrid nodes, else the computer (host) name.
    pub name: String,
    /// `Online`, `ConnectionLost` or `Inactive`.
    pub ping_status: String,
    /// SSM agent version.
    pub agent_version: String,
    /// Platform name and version, e.g. `Amazon Linux 2023`.
    pub platform: String,
}

impl ManagedNode {
    /// Whether Session Manager can reach it now.
    pub fn online(&self) -> bool {
        self.ping_status == "Online"
    }
}

impl std::fmt::Display for ManagedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}, agent {})",
            self.id, self.name, self.ping_status, self.agent_version
        )
    }
}

impl Aws {
    /// The managed nodes for which filter `key` (`tag:Name`, `tag:Role`, `InstanceIds`, …) has
    /// one of `values`.
    pub async fn describe_nodes(
        &self,
        key: &str,
        values: &[String],
    ) -> Result<Vec<ManagedNode>, AwsError> {
        let filter = InstanceInformationStringFilter::builder()
            .key(key)
            .set_values(Some(values.to_vec()))
            .build()
            .map_err(|e| AwsError::Other(format!("bad DescribeInstanceInformation filter: {e}")))?;
        let subject = values.join(",");
        let mut nodes = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .ssm
                .describe_instance_information()
                .filters(filter.clone())
                .max_results(50)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| match self.classify(e, &subject) {
                    AwsError::AccessDenied(m) => AwsError::DescribeDenied(m),
                    other => other,
                })?;
            for info in out.instance_information_list() {
                let platform = match (info.platform_name(), info.platform_version()) {
                    (Some(n), Some(v)) if !n.is_empty() => format!("{n} {v}"),
                    (Some(n), _) if !n.is_empty() => n.to_owned(),
                    _ => info
                        .platform_type()
                        .map_or_else(|| "unknown platform".to_owned(), |p| p.as_str().to_owned()),
                };
                let name = info
                    .name()
                    .filter(|n| !n.is_empty())
                    .or(info.computer_name())
                    .unwrap_or("-");
                nodes.push(ManagedNode {
                    id: info.instance_id().unwrap_or_default().to_owned(),
                    name: name.to_owned(),
                    ping_status: info
                        .ping_status()
                        .map_or_else(|| "unknown".to_owned(), |p| p.as_str().to_owned()),
                    agent_version: info.agent_version().unwrap_or("unknown").to_owned(),
                    platform,
                });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(nodes)
    }
}
