//! EC2 Instance Connect: push a public key that the instance's sshd accepts for 60 seconds, for
//! one OS user. Called right before StartSession so that the key is still valid when ssh
//! authenticates through the new session.

use aws_sdk_ec2instanceconnect::error::ProvideErrorMetadata;

use super::{Aws, AwsError};

impl Aws {
    /// `SendSSHPublicKey` for `instance` and `user`.
    pub async fn send_ssh_public_key(
        &self,
        instance: &str,
        user: &str,
        public_key: &str,
    ) -> Result<(), AwsError> {
        let client = aws_sdk_ec2instanceconnect::Client::new(&self.sdk);
        let endpoint =
            std::env::var("AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT").unwrap_or_else(|_| {
                format!("https://ec2-instance-connect.{}.amazonaws.com", self.region)
            });
        let out = client
            .send_ssh_public_key()
            .instance_id(instance)
            .instance_os_user(user)
            .ssh_public_key(public_key)
            .send()
            .await;
        match out {
            Ok(o) if o.success() => Ok(()),
            Ok(_) => Err(AwsError::EicRefused {
                instance: instance.to_owned(),
                code: "NotSuccessful".into(),
                message: "the service did not confirm the key".into(),
            }),
            Err(e) => {
                let (code, message) = (
                    e.code().unwrap_or_default().to_owned(),
                    e.message().unwrap_or_default().to_owned(),
                );
                Err(
                    match super::error::classify(e, instance, &self.site(&endpoint)) {
                        AwsError::AccessDenied(m) => AwsError::EicDenied(m),
                        AwsError::Service { .. } | AwsError::TargetNotConnected { .. } => {
                            AwsError::EicRefused {
                                instance: instance.to_owned(),
                                code,
                                message,
                            }
                        }
                        AwsError::Unreachable { endpoint, detail } => {
                            AwsError::EicUnreachable { endpoint, detail }
                        }
                        other => other,
                    },
                )
            }
        }
    }
}
