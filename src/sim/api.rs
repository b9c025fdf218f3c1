//! The fake SSM control plane: AWS JSON 1.1 over HTTP (`X-Amz-Target: AmazonSSM.<Op>`), answering
//! StartSession, ResumeSession, TerminateSession and DescribeInstanceInformation, and beside them
//! EC2 Instance Connect SendSSHPublicKey, STS GetCallerIdentity and ECS (`ecs`, under `/ecs`), with errors in the real wire
//! shape (`__type` in the body and `x-amzn-ErrorType`), so the real AWS SDK talks to it unchanged.
//! The session operations pass the rate limit first (`throttle`), as on AWS.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::service::Service;

/// Path of the fake ECS endpoint (`AWS_ENDPOINT_URL_ECS`); only ECS operations are served there.
pub const ECS_PATH: &str = "/ecs";

/// An API error as the service would send it.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Error code (`__type`).
    pub code: &'static str,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// A 400 with this code.
    pub fn client(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, service: Arc<Service>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let handler = hyper::service::service_fn(move |req| handle(req, service.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, handler)
                .await;
        });
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    service: Arc<Service>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Not AWS: what a test sshd's AuthorizedKeysCommand asks for (keys pushed through EC2
    // Instance Connect in the last 60 s), `GET /sim/eic-keys/USER`.
    if let Some(user) = req.uri().path().strip_prefix("/sim/eic-keys/") {
        let keys = service.eic_authorized_keys(user);
        return Ok(Response::new(Full::new(Bytes::from(keys))));
    }
    let on_ecs = req.uri().path().starts_with(ECS_PATH);
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    // STS speaks the query protocol: a form body in, XML out.
    if body.starts_with(b"Action=GetCallerIdentity") {
        let resp = Response::builder()
            .header("content-type", "text/xml")
            .body(Full::new(Bytes::from(super::fleet::caller_identity())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
        return Ok(resp);
    }
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let op = target.rsplit('.').next().unwrap_or_default();
    let ecs_op = target.starts_with("AmazonEC2ContainerService");
    let result = match op {
        _ if on_ecs && !ecs_op => {
            service
                .misrouted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(ApiError::client(
                "UnknownOperationException",
                format!("{target} sent to the ECS endpoint"),
            ))
        }
        "ExecuteCommand" => service.execute_command(&input),
        "DescribeTasks" => super::ecs::describe_tasks(&service.config().ecs_tasks, &input),
        "ListTasks" => super::ecs::list_tasks(&service.config().ecs_tasks, &input),
        "StartSession" => service
            .throttle("StartSession")
            .and_then(|()| service.start_session(&input)),
        "ResumeSession" => service
            .throttle("ResumeSession")
            .and_then(|()| service.resume_session(&input)),
        "TerminateSession" => service
            .throttle("TerminateSession")
            .and_then(|()| service.terminate_session(&input)),
        "DescribeInstanceInformation" => service.describe_instances(&input),
        "SendSSHPublicKey" => service.send_ssh_public_key(&input),
        "GenerateDataKey" => service.kms.generate_data_key(&input),
        _ => Err(ApiError::client(
            "UnknownOperationException",
            format!("unknown operation {op}"),
        )),
    };
    Ok(match result {
        Ok(v) => reply(StatusCode::OK, &v, None),
        Err(e) => reply(
            e.status,
            &json!({"__type": e.code, "message": e.message}),
            Some(e.code),
        ),
    })
}

fn reply(status: StatusCode, body: &Value, error: Option<&str>) -> Response<Full<Bytes>> {
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string());
    if let Some(code) = error {
        resp = resp.header("x-amzn-errortype", code);
    }
    resp.body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
