//! The fake SSM control plane: AWS JSON 1.1 over HTTP (`X-Amz-Target: AmazonSSM.<Op>`), answering
//! StartSession, ResumeSession, TerminateSession and DescribeInstanceInformation, and beside them
//! EC2 Instance Connect SendSSHPublicKey, STS GetCallerIdentity and ECS (`ecs`, under `/ecs`), with errors in the real wire
//! shape (`__type` in the body and `x-amzn-ErrorType`), so the real AWS SDK talks to it unchanged.
//! The session operations pass the rate limit first (`throttle`), as on AWS.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use super::error::ApiError;
use super::service::Service;
use super::sigv4;

/// Path of the fake ECS endpoint (`AWS_ENDPOINT_URL_ECS`); only ECS operations are served there.
pub const ECS_PATH: &str = "/ecs";

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
    // Not AWS, and not signed: what a test sshd's AuthorizedKeysCommand asks for (public keys
    // pushed through EC2 Instance Connect in the last 60 s), `GET /sim/eic-keys/USER`.
    if let Some(user) = req.uri().path().strip_prefix("/sim/eic-keys/") {
        let keys = service.eic_authorized_keys(user);
        return Ok(Response::new(Full::new(Bytes::from(keys))));
    }
    let (parts, body) = req.into_parts();
    let on_ecs = parts.uri.path().starts_with(ECS_PATH);
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    // STS speaks the query protocol: a form body in, XML out.
    let sts = body.starts_with(b"Action=");
    // Only the holder of a key the simulator printed may use it, as on AWS.
    let uri = parts.uri.to_string();
    let keys = service.api_keys();
    let signed = sigv4::verify_api(
        parts.method.as_str(),
        &uri,
        &parts.headers,
        &body,
        &keys,
        SystemTime::now(),
    );
    if let Err(why) = signed {
        tracing::info!(%why, %target, "unsigned or wrongly signed request refused");
        return Ok(refused(&why, sts));
    }
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

/// The service's answer to a request whose signature does not hold (HTTP 403; XML for STS).
fn refused(why: &str, sts: bool) -> Response<Full<Bytes>> {
    let code = if why.starts_with("missing Authorization") {
        "MissingAuthenticationTokenException"
    } else if why.starts_with("unknown access key") {
        "UnrecognizedClientException"
    } else {
        "InvalidSignatureException"
    };
    let message = format!("the request signature is not valid: {why}");
    if !sts {
        let body = json!({"__type": code, "message": message});
        return reply(StatusCode::FORBIDDEN, &body, Some(code));
    }
    let xml = format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}\
         </Message></Error></ErrorResponse>"
    );
    Response::builder()
        .status(StatusCode::FORBIDDEN)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
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
