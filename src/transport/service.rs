//! What the [`Driver`](super::Driver) needs from the outside world: the data channel and the
//! three control-plane calls it makes during a session. [`Aws`] with the real websocket in
//! production; an in-memory fake in the driver's tests, so its resume, backoff and quiet-end
//! logic runs on tokio's virtual clock.

use std::collections::HashMap;
use std::future::Future;

use futures_util::stream::SplitStream;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::websocket::{self, Ws};
use crate::aws::{Aws, AwsError, DataKey, SessionGrant};

/// An open data channel: messages to send (a writer task batches them) and messages received.
pub type Channel<R> = (mpsc::UnboundedSender<Message>, R);

/// The service side of a session, as the driver sees it.
pub trait Service: Send + Sync + 'static {
    /// The read half of a data channel.
    type Reader: Stream<Item = Result<Message, WsError>> + Unpin + Send;

    /// Whether the session token may be sent to `url`: one line naming the fix when not.
    fn check_url(&self, url: &str) -> Result<(), String>;

    /// Dials the data channel of `grant` and authenticates with its token.
    fn open(
        &self,
        grant: &SessionGrant,
        client_id: &str,
    ) -> impl Future<Output = anyhow::Result<Channel<Self::Reader>>> + Send;

    /// ResumeSession: a new token (and maybe URL), or `None` when the session is gone.
    fn resume(
        &self,
        session_id: &str,
    ) -> impl Future<Output = Result<Option<SessionGrant>, AwsError>> + Send;

    /// TerminateSession.
    fn terminate(&self, session_id: &str) -> impl Future<Output = Result<(), AwsError>> + Send;

    /// KMS GenerateDataKey bound to `context` (§6).
    fn data_key(
        &self,
        key_id: &str,
        context: HashMap<String, String>,
    ) -> impl Future<Output = Result<DataKey, AwsError>> + Send;
}

impl Service for Aws {
    type Reader = SplitStream<Ws>;

    fn check_url(&self, url: &str) -> Result<(), String> {
        websocket::check_url(self.net(), url)
    }

    async fn open(
        &self,
        grant: &SessionGrant,
        client_id: &str,
    ) -> anyhow::Result<Channel<Self::Reader>> {
        let ws = websocket::open(&grant.stream_url, &grant.token, client_id, self).await?;
        Ok(split(ws))
    }

    async fn resume(&self, session_id: &str) -> Result<Option<SessionGrant>, AwsError> {
        self.resume_session(session_id).await
    }

    async fn terminate(&self, session_id: &str) -> Result<(), AwsError> {
        self.terminate_session(session_id).await
    }

    async fn data_key(
        &self,
        key_id: &str,
        context: HashMap<String, String>,
    ) -> Result<DataKey, AwsError> {
        self.generate_data_key(key_id, context).await
    }
}

/// Splits a websocket into a writer task (batched sends) and the read half.
fn split(ws: Ws) -> Channel<SplitStream<Ws>> {
    let (mut sink, stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(msg) = rx.try_recv() {
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    (tx, stream)
}
