//! The simulator's fake ECS API (AWS JSON 1.1, `X-Amz-Target:
//! AmazonEC2ContainerServiceV20141113.<Op>`): `DescribeTasks`, `ListTasks` and
//! `ExecuteCommand`, over a configured list of tasks whose containers are sessions of the
//! simulated agent (target `ecs:CLUSTER_TASKID_RUNTIMEID`, protocol.md §16.2). It refuses in the
//! real service's terms what users hit: execute-command not enabled, the agent not running, a
//! task that is not RUNNING, an unknown container, and `ecs:ExecuteCommand` denied.

use serde_json::{Value, json};

use super::error::ApiError;

/// The account in every ARN.
const ACCOUNT: &str = "123456789012";

/// One container of a simulated task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimContainer {
    /// Container name.
    pub name: String,
    /// Docker runtime id (the last part of the SSM target).
    pub runtime_id: String,
    /// Whether its ExecuteCommandAgent is RUNNING (else STOPPED).
    pub agent_running: bool,
}

/// One simulated ECS task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTask {
    /// Cluster name.
    pub cluster: String,
    /// Task id (the last part of the task ARN).
    pub id: String,
    /// The service that started it, if any.
    pub service: Option<String>,
    /// Its containers.
    pub containers: Vec<SimContainer>,
    /// `lastStatus` (RUNNING, PENDING, STOPPED, …).
    pub status: String,
    /// `enableExecuteCommand`.
    pub exec_enabled: bool,
}

impl SimTask {
    /// A RUNNING task with execute-command enabled and one container, `app`.
    pub fn new(cluster: &str, id: &str, service: Option<&str>) -> Self {
        let task = Self {
            cluster: cluster.to_owned(),
            id: id.to_owned(),
            service: service.map(str::to_owned),
            containers: Vec::new(),
            status: "RUNNING".to_owned(),
            exec_enabled: true,
        };
        task.container("app")
    }

    /// Adds a container (with a running agent).
    pub fn container(mut self, name: &str) -> Self {
        let runtime_id = format!("{}-{}", self.id, 1000 + self.containers.len());
        self.containers.push(SimContainer {
            name: name.to_owned(),
            runtime_id,
            agent_running: true,
        });
        self
    }

    /// Sets `lastStatus`.
    pub fn status(mut self, status: &str) -> Self {
        self.status = status.to_owned();
        self
    }

    /// Started without `--enable-execute-command`.
    pub fn exec_disabled(mut self) -> Self {
        self.exec_enabled = false;
        self
    }

    /// Every container's ExecuteCommandAgent is STOPPED.
    pub fn agent_stopped(mut self) -> Self {
        for c in &mut self.containers {
            c.agent_running = false;
        }
        self
    }

    /// The SSM target of one of its containers.
    pub fn target(&self, container: &SimContainer) -> String {
        format!("ecs:{}_{}_{}", self.cluster, self.id, container.runtime_id)
    }

    fn arn(&self) -> String {
        format!(
            "arn:aws:ecs:us-east-1:{ACCOUNT}:task/{}/{}",
            self.cluster, self.id
        )
    }

    fn to_json(&self) -> Value {
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let mut v = json!({
                    "containerArn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:container/{}/{}/{}", self.cluster, self.id, c.name),
                    "taskArn": self.arn(),
                    "name": c.name,
                    "runtimeId": c.runtime_id,
                    "lastStatus": self.status,
                });
                if self.exec_enabled {
                    let agent = if c.agent_running { "RUNNING" } else { "STOPPED" };
                    v["managedAgents"] =
                        json!([{"name": "ExecuteCommandAgent", "lastStatus": agent}]);
                }
                v
            })
            .collect();
        let mut v = json!({
            "taskArn": self.arn(),
            "clusterArn": cluster_arn(&self.cluster),
            "lastStatus": self.status,
            "desiredStatus": if self.status == "STOPPED" { "STOPPED" } else { "RUNNING" },
            "enableExecuteCommand": self.exec_enabled,
            "launchType": "FARGATE",
            "containers": containers,
        });
        if let Some(s) = &self.service {
            v["group"] = json!(format!("service:{s}"));
        }
        v
    }
}

/// The default tasks: cluster `sim`, service `web` with one running task (container `app`).
pub fn default_tasks() -> Vec<SimTask> {
    vec![SimTask::new(
        "sim",
        "0123456789abcdef0123456789abcdef",
        Some("web"),
    )]
}

fn cluster_arn(cluster: &str) -> String {
    format!("arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/{cluster}")
}

/// The last part of an ARN, or the name as given.
fn last(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn text<'a>(input: &'a Value, key: &str) -> &'a str {
    input.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::client("InvalidParameterException", message)
}

fn cluster_tasks<'a>(tasks: &'a [SimTask], input: &Value) -> Result<Vec<&'a SimTask>, ApiError> {
    let cluster = last(text(input, "cluster"));
    let cluster = if cluster.is_empty() {
        "default"
    } else {
        cluster
    };
    let found: Vec<&SimTask> = tasks.iter().filter(|t| t.cluster == cluster).collect();
    if found.is_empty() {
        return Err(ApiError::client(
            "ClusterNotFoundException",
            "Cluster not found.",
        ));
    }
    Ok(found)
}

/// `DescribeTasks`: unknown tasks are `failures` with reason MISSING, as the service answers.
pub fn describe_tasks(tasks: &[SimTask], input: &Value) -> Result<Value, ApiError> {
    let in_cluster = cluster_tasks(tasks, input)?;
    let mut found = Vec::new();
    let mut failures = Vec::new();
    for wanted in input
        .get("tasks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let wanted = wanted.as_str().unwrap_or_default();
        match in_cluster.iter().find(|t| t.id == last(wanted)) {
            Some(t) => found.push(t.to_json()),
            None => failures.push(json!({"arn": wanted, "reason": "MISSING"})),
        }
    }
    Ok(json!({"tasks": found, "failures": failures}))
}

/// `ListTasks`, by `serviceName` and `desiredStatus`.
pub fn list_tasks(tasks: &[SimTask], input: &Value) -> Result<Value, ApiError> {
    let in_cluster = cluster_tasks(tasks, input)?;
    let service = text(input, "serviceName");
    if !service.is_empty()
        && !in_cluster
            .iter()
            .any(|t| t.service.as_deref() == Some(service))
    {
        return Err(ApiError::client(
            "ServiceNotFoundException",
            "Service not found.",
        ));
    }
    let desired = text(input, "desiredStatus");
    let desired = if desired.is_empty() {
        "RUNNING"
    } else {
        desired
    };
    let arns: Vec<String> = in_cluster
        .iter()
        .filter(|t| service.is_empty() || t.service.as_deref() == Some(service))
        .filter(|t| (t.status == "STOPPED") == (desired == "STOPPED"))
        .map(|t| t.arn())
        .collect();
    Ok(json!({"taskArns": arns}))
}

/// What `ExecuteCommand` asks the service to start.
#[derive(Debug, Clone)]
pub struct ExecPlan {
    /// `ecs:CLUSTER_TASK_RUNTIMEID`.
    pub target: String,
    /// The command to run on the container's pty.
    pub command: String,
    /// The response, without its `session`.
    pub response: Value,
}

/// `ExecuteCommand`'s checks, in the service's order; `denied` lists task ids whose
/// `ecs:ExecuteCommand` IAM refuses.
pub fn execute_command(
    tasks: &[SimTask],
    denied: &[String],
    input: &Value,
) -> Result<ExecPlan, ApiError> {
    let in_cluster = cluster_tasks(tasks, input)?;
    let wanted = last(text(input, "task"));
    if denied.iter().any(|d| d == wanted) {
        return Err(ApiError::client(
            "AccessDeniedException",
            format!(
                "User: arn:aws:iam::{ACCOUNT}:user/sim is not authorized to perform: \
                 ecs:ExecuteCommand on resource: arn:aws:ecs:us-east-1:{ACCOUNT}:task/{wanted} \
                 because no identity-based policy allows the ecs:ExecuteCommand action"
            ),
        ));
    }
    if input.get("interactive").and_then(Value::as_bool) != Some(true) {
        return Err(invalid("Interactive is the only mode supported currently."));
    }
    let task = in_cluster
        .iter()
        .find(|t| t.id == wanted)
        .ok_or_else(|| invalid("The specified task was not found."))?;
    if task.status != "RUNNING" {
        return Err(invalid(format!(
            "The execute command failed because the task is in {} state.",
            task.status
        )));
    }
    let name = text(input, "container");
    let container = match (name, task.containers.as_slice()) {
        ("", [one]) => one,
        ("", _) => {
            return Err(invalid(
                "A container name must be specified for a task with multiple containers.",
            ));
        }
        (name, all) => all
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| invalid("The container name specified was not found in the task."))?,
    };
    if !task.exec_enabled || !container.agent_running {
        return Err(invalid(
            "The execute command failed because execute command was not enabled when the task \
             was run or the execute command agent isn't running. Wait and try again or run a \
             new task with execute command enabled and try again.",
        ));
    }
    let command = text(input, "command");
    if command.trim().is_empty() {
        return Err(invalid("command must not be empty"));
    }
    Ok(ExecPlan {
        target: task.target(container),
        command: command.to_owned(),
        response: json!({
            "clusterArn": cluster_arn(&task.cluster),
            "containerArn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:container/{}/{}/{}", task.cluster, task.id, container.name),
            "containerName": container.name,
            "interactive": true,
            "taskArn": task.arn(),
        }),
    })
}

/// Whether `target` is a container that accepts sessions (execute-command enabled, agent
/// running, task RUNNING).
pub fn reachable(tasks: &[SimTask], target: &str) -> bool {
    tasks.iter().any(|t| {
        t.status == "RUNNING"
            && t.exec_enabled
            && t.containers
                .iter()
                .any(|c| c.agent_running && t.target(c) == target)
    })
}
