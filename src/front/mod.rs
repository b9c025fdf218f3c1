//! The user-facing modes. Each only decides where the session's bytes come from and go to.

pub mod doctor;
pub mod forward;
pub mod manual;
pub mod plugin;
pub mod proxy;
pub mod shell;
pub mod sim;
pub mod ssh_config;
pub mod target;

use crate::aws::{Aws, AwsOptions};
use crate::cli::AwsArgs;
use crate::transport::websocket::{self, NetConfig};

/// Applies the network flags and loads the SDK clients; returns them with the profile, which
/// keys the target cache.
pub async fn connect(args: &AwsArgs) -> anyhow::Result<(Aws, Option<String>)> {
    websocket::configure(NetConfig {
        endpoint_override: args.ssmmessages_endpoint.clone(),
    })?;
    let opts = AwsOptions {
        profile: args.profile.clone(),
        region: args.region.clone(),
        endpoint_url: args.endpoint_url.clone(),
    };
    Ok((Aws::load(&opts).await?, opts.profile))
}
