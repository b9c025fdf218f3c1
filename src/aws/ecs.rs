//! ECS Exec's control plane: a task given by id or by service name, checked the way
//! `ExecuteCommand` would refuse it (not RUNNING, execute-command not enabled, agent not
//! running, no such container) so each failure gets its own line, and `ExecuteCommand` itself.
//! The SSM target of a container is `ecs:CLUSTER_TASKID_RUNTIMEID` (protocol.md §16.2).

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{DesiredStatus, ManagedAgentName, Task};

use super::{Aws, AwsError, SessionGrant};

/// A container that accepts ECS Exec sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsContainer {
    /// Cluster name.
    pub cluster: String,
    /// Task id (the last part of its ARN).
    pub task: String,
    /// Container name.
    pub container: String,
    /// Its runtime id.
    pub runtime_id: String,
}

impl EcsContainer {
    /// The SSM target: `ecs:CLUSTER_TASKID_RUNTIMEID`.
    pub fn target(&self) -> String {
        format!("ecs:{}_{}_{}", self.cluster, self.task, self.runtime_id)
    }
}

/// The last part of an ARN (`…/cluster/task-id` → `task-id`), or the name as given.
fn last(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

impl Aws {
    fn ecs(&self) -> aws_sdk_ecs::Client {
        aws_sdk_ecs::Client::new(&self.sdk)
    }

    fn ecs_endpoint(&self) -> String {
        std::env::var("AWS_ENDPOINT_URL_ECS")
            .unwrap_or_else(|_| format!("https://ecs.{}.amazonaws.com", self.region))
    }

    fn ecs_error<E, R>(&self, e: aws_sdk_ecs::error::SdkError<E, R>, cluster: &str) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code = e.code().unwrap_or_default().to_owned();
        let message = e.message().unwrap_or_default().to_owned();
        let endpoint = self.ecs_endpoint();
        match super::error::classify(e, cluster, &self.site(&endpoint)) {
            AwsError::AccessDenied(m) => AwsError::EcsDenied(m),
            AwsError::Unreachable { detail, .. } => AwsError::EcsUnreachable { endpoint, detail },
            _ if code == "ClusterNotFoundException" => AwsError::EcsNotFound {
                what: format!("cluster {cluster}"),
                region: self.region.clone(),
            },
            AwsError::Service { .. } | AwsError::TargetNotConnected { .. } => {
                AwsError::EcsRefused { code, message }
            }
            other => other,
        }
    }

    /// The container of `task` (a task id or ARN, else a service name) that sessions go to;
    /// `container` may be omitted when the task has one.
    pub async fn ecs_container(
        &self,
        cluster: &str,
        task: &str,
        container: Option<&str>,
    ) -> Result<EcsContainer, AwsError> {
        let task = match self.ecs_task(cluster, task).await? {
            Some(t) => t,
            None => {
                let id = self.ecs_service_task(cluster, task).await?;
                self.ecs_task(cluster, &id)
                    .await?
                    .ok_or_else(|| AwsError::EcsNotFound {
                        what: format!("task {id} in cluster {cluster}"),
                        region: self.region.clone(),
                    })?
            }
        };
        pick_container(cluster, &task, container)
    }

    /// DescribeTasks for one task; `None` when the cluster has no such task.
    async fn ecs_task(&self, cluster: &str, task: &str) -> Result<Option<Task>, AwsError> {
        let out = self
            .ecs()
            .describe_tasks()
            .cluster(cluster)
            .tasks(task)
            .send()
            .await
            .map_err(|e| self.ecs_error(e, cluster))?;
        Ok(out.tasks().first().cloned())
    }

    /// The id of a running task of `service`: the first ListTasks names (the choice is logged).
    async fn ecs_service_task(&self, cluster: &str, service: &str) -> Result<String, AwsError> {
        let out = self
            .ecs()
            .list_tasks()
            .cluster(cluster)
            .service_name(service)
            .desired_status(DesiredStatus::Running)
            .send()
            .await;
        let not_found = || AwsError::EcsNotFound {
            what: format!("task or service {service} in cluster {cluster}"),
            region: self.region.clone(),
        };
        let out = match out {
            Err(e) if e.code() == Some("ServiceNotFoundException") => return Err(not_found()),
            other => other.map_err(|e| self.ecs_error(e, cluster))?,
        };
        let arns = out.task_arns();
        let Some(first) = arns.first() else {
            return Err(AwsError::EcsNoTasks {
                service: service.to_owned(),
                cluster: cluster.to_owned(),
            });
        };
        let id = last(first).to_owned();
        tracing::info!(
            %service, task = %id, running = arns.len(),
            "service resolved to its first running task"
        );
        Ok(id)
    }

    /// ECS `ExecuteCommand` (interactive, the only mode ECS has).
    pub async fn ecs_execute_command(
        &self,
        target: &EcsContainer,
        command: &str,
    ) -> Result<SessionGrant, AwsError> {
        let out = self
            .ecs()
            .execute_command()
            .cluster(&target.cluster)
            .task(&target.task)
            .container(&target.container)
            .command(command)
            .interactive(true)
            .send()
            .await
            .map_err(|e| self.ecs_error(e, &target.cluster))?;
        let s = out.session();
        let field = |v: Option<&str>| v.map(str::to_owned);
        super::grant(
            s.and_then(|s| field(s.session_id())),
            s.and_then(|s| field(s.token_value())),
            s.and_then(|s| field(s.stream_url())),
        )
        .ok_or_else(|| AwsError::Other("ExecuteCommand returned no session".into()))
    }
}

/// The container sessions go to, refused the way ExecuteCommand would refuse it.
fn pick_container(
    cluster: &str,
    task: &Task,
    container: Option<&str>,
) -> Result<EcsContainer, AwsError> {
    let id = last(task.task_arn().unwrap_or_default()).to_owned();
    let status = task.last_status().unwrap_or("UNKNOWN");
    if status != "RUNNING" {
        return Err(AwsError::EcsNotRunning {
            task: id,
            status: status.to_owned(),
        });
    }
    if !task.enable_execute_command() {
        return Err(AwsError::EcsExecDisabled { task: id });
    }
    let names = || {
        task.containers()
            .iter()
            .filter_map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen =
        match (container, task.containers()) {
            (None, [one]) => one,
            (None, _) => {
                return Err(AwsError::EcsContainer {
                    task: id,
                    why: "several containers".into(),
                    names: names(),
                });
            }
            (Some(name), all) => all.iter().find(|c| c.name() == Some(name)).ok_or_else(|| {
                AwsError::EcsContainer {
                    task: id.clone(),
                    why: format!("no container {name}"),
                    names: names(),
                }
            })?,
        };
    let name = chosen.name().unwrap_or_default().to_owned();
    let agent = chosen
        .managed_agents()
        .iter()
        .find(|a| a.name() == Some(&ManagedAgentName::ExecuteCommandAgent))
        .and_then(|a| a.last_status())
        .unwrap_or("absent");
    if agent != "RUNNING" {
        return Err(AwsError::EcsAgent {
            task: id,
            container: name,
            status: agent.to_owned(),
        });
    }
    Ok(EcsContainer {
        cluster: last(cluster).to_owned(),
        task: id,
        container: name,
        runtime_id: chosen.runtime_id().unwrap_or_default().to_owned(),
    })
}
