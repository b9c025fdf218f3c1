//! The driver on tokio's virtual clock (`start_paused`) against an in-memory [`Service`] whose
//! far end is the simulator's agent: resume, backoff, flap delay, liveness, the quiet ends
//! and backpressure, each in virtual seconds that cost nothing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Error as WsError;

use super::*;
use crate::aws::DataKey;
use crate::sim::agent::{Agent, AgentConfig, AgentEvent};
use crate::sim::frames::channel_closed;
use crate::transport::service::Channel;

/// What the fake service answers to ResumeSession.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// A new token.
    Grant,
    /// No token: the session is over on the service.
    Gone,
    /// A transient failure (the endpoint unreachable).
    Unreachable,
}

/// Everything the fake service saw and how it answers.
struct Shared {
    /// When each data channel was dialed.
    dials: Vec<Instant>,
    /// When each ResumeSession came.
    resumes: Vec<Instant>,
    /// When each TerminateSession came.
    terminates: Vec<Instant>,
    /// The answer to ResumeSession.
    resume: Resume,
    /// Dials still to answer with a websocket that ends before carrying anything.
    empty_links: usize,
}

/// A websocket between the driver and the peer task.
struct Link {
    to_client: mpsc::UnboundedSender<Result<Message, WsError>>,
    from_client: mpsc::UnboundedReceiver<Message>,
}

/// What a test tells the agent's side.
enum Control {
    /// Drop the websocket, and with it what the driver sent that the agent has not read.
    Cut,
    /// Keep the websocket open but carry nothing either way, pongs included.
    Mute,
    /// The destination sends these bytes.
    Data(Bytes),
    /// The destination closes: the agent ends the session (channel_closed).
    Eof,
}

#[derive(Clone)]
struct Fake {
    shared: Arc<Mutex<Shared>>,
    links: mpsc::UnboundedSender<Link>,
    /// Messages the driver has read, over all websockets.
    read: Arc<AtomicUsize>,
    /// Frames the driver sent that a cut dropped unread.
    cut_unread: Arc<AtomicUsize>,
}

type Reader = Pin<Box<dyn Stream<Item = Result<Message, WsError>> + Send>>;

impl Service for Fake {
    type Reader = Reader;

    fn check_url(&self, _: &str) -> Result<(), String> {
        Ok(())
    }

    async fn open(&self, _: &SessionGrant, _: &str) -> anyhow::Result<Channel<Reader>> {
        let empty = {
            let mut shared = self.shared.lock().unwrap();
            shared.dials.push(Instant::now());
            // A hot loop never lets virtual time move: stop it here rather than hang.
            assert!(shared.dials.len() < 1000, "a hot loop of dials");
            let empty = shared.empty_links > 0;
            shared.empty_links = shared.empty_links.saturating_sub(usize::from(empty));
            empty
        };
        let (to_client, mut rx) = mpsc::unbounded_channel();
        let (tx, from_client) = mpsc::unbounded_channel();
        if !empty {
            let _ = self.links.send(Link {
                to_client,
                from_client,
            });
        }
        let read = self.read.clone();
        let reader = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).inspect(move |_| {
            read.fetch_add(1, Ordering::Relaxed);
        });
        Ok((tx, Box::pin(reader)))
    }

    async fn resume(&self, session_id: &str) -> Result<Option<SessionGrant>, AwsError> {
        let mut shared = self.shared.lock().unwrap();
        shared.resumes.push(Instant::now());
        match shared.resume {
            Resume::Grant => Ok(Some(grant(session_id))),
            Resume::Gone => Ok(None),
            Resume::Unreachable => Err(AwsError::Unreachable {
                endpoint: "https://ssm.test".into(),
                detail: "connection refused".into(),
            }),
        }
    }

    async fn terminate(&self, _: &str) -> Result<(), AwsError> {
        self.shared.lock().unwrap().terminates.push(Instant::now());
        Ok(())
    }

    async fn data_key(&self, _: &str, _: HashMap<String, String>) -> Result<DataKey, AwsError> {
        Err(AwsError::Other("no KMS here".into()))
    }
}

fn grant(session_id: &str) -> SessionGrant {
    SessionGrant {
        session_id: session_id.into(),
        token: "token".into(),
        stream_url: "wss://ssmmessages.test/v1/data-channel/s-1".into(),
    }
}

/// The agent's side: the simulator's agent behind whichever websocket the driver dialed last,
/// with its destination recorded in `target`.
async fn peer(
    mut links: mpsc::UnboundedReceiver<Link>,
    mut control: mpsc::UnboundedReceiver<Control>,
    target: Arc<Mutex<Vec<u8>>>,
    cut_unread: Arc<AtomicUsize>,
) {
    let mut agent = Agent::new(AgentConfig::default(), Instant::now().into_std());
    let mut link: Option<Link> = None;
    let mut muted = false;
    let mut started = false;
    loop {
        while let Some(ev) = agent.poll_event() {
            match ev {
                AgentEvent::Dial => agent.handle_target_connected(),
                AgentEvent::ToTarget(b) => {
                    target.lock().unwrap().extend_from_slice(&b);
                    agent.handle_target_written(b.len());
                }
                AgentEvent::Finished(output) => {
                    agent_transmit(&link, muted, channel_closed("i-1", "s-1", &output))
                }
                _ => {}
            }
        }
        while let Some(frame) = agent.poll_transmit() {
            agent_transmit(&link, muted, frame);
        }
        let wake = agent
            .poll_timeout()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let reading = link.is_some() && !muted && agent.can_take_frames();
        tokio::select! {
            new = links.recv() => {
                let Some(new) = new else { return };
                let now = Instant::now().into_std();
                match std::mem::replace(&mut started, true) {
                    false => agent.start(now),
                    true => agent.handle_client_reconnect(now),
                }
                link = Some(new);
                muted = false;
            }
            msg = async { link.as_mut().unwrap().from_client.recv().await }, if reading => {
                match msg {
                    Some(Message::Binary(b)) => agent.handle_frame(Instant::now().into_std(), &b),
                    Some(Message::Ping(p)) => agent_send(&link, Message::Pong(p)),
                    Some(_) => {}
                    None => link = None,
                }
            }
            ctl = control.recv() => match ctl {
                Some(Control::Cut) => {
                    if let Some(mut link) = link.take() {
                        while let Ok(msg) = link.from_client.try_recv() {
                            cut_unread.fetch_add(msg.is_binary().into(), Ordering::Relaxed);
                        }
                    }
                }
                Some(Control::Mute) => muted = true,
                Some(Control::Data(b)) => agent.handle_target_data(Instant::now().into_std(), b),
                Some(Control::Eof) => agent.handle_target_eof(Instant::now().into_std()),
                None => return,
            },
            _ = tokio::time::sleep_until(wake) => agent.handle_timeout(Instant::now().into_std()),
        }
    }
}

fn agent_transmit(link: &Option<Link>, muted: bool, frame: Bytes) {
    if !muted {
        agent_send(link, Message::Binary(frame));
    }
}

fn agent_send(link: &Option<Link>, msg: Message) {
    if let Some(link) = link {
        let _ = link.to_client.send(Ok(msg));
    }
}

/// Virtual time stands still while a task spins, so no `timeout` bounds a hot loop: a test
/// still running after a minute of real time aborts the test binary instead of hanging it.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn start() -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if finished.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("a driver test ran for a minute of real time: a hot loop?");
            std::process::abort();
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A driver running a session against the fake, and the test's handles on both ends.
struct Run {
    fake: Fake,
    control: mpsc::UnboundedSender<Control>,
    target: Arc<Mutex<Vec<u8>>>,
    input: Option<mpsc::Sender<Input>>,
    output: mpsc::Receiver<Bytes>,
    signals: mpsc::Sender<i32>,
    /// The session's result and how many times it resumed.
    done: JoinHandle<(Result<Outcome, DriveError>, u32)>,
    _watchdog: Watchdog,
}

impl Run {
    /// Starts a session with `config` (local output holds `output_room` messages) and waits
    /// for its handshake.
    async fn start(config: DriverConfig, output_room: usize) -> Self {
        let watchdog = Watchdog::start();
        let (links_tx, links) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::unbounded_channel();
        let target = Arc::new(Mutex::new(Vec::new()));
        let cut_unread = Arc::new(AtomicUsize::new(0));
        tokio::spawn(peer(links, control_rx, target.clone(), cut_unread.clone()));
        let fake = Fake {
            shared: Arc::new(Mutex::new(Shared {
                dials: Vec::new(),
                resumes: Vec::new(),
                terminates: Vec::new(),
                resume: Resume::Grant,
                empty_links: 0,
            })),
            links: links_tx,
            read: Arc::new(AtomicUsize::new(0)),
            cut_unread,
        };
        let (input, input_rx) = mpsc::channel(16);
        let (output_tx, output) = mpsc::channel(output_room);
        let (signals, mut signals_rx) = mpsc::channel(1);
        let (ready_tx, ready) = oneshot::channel();
        let service = fake.clone();
        let done = tokio::spawn(async move {
            let mut driver = Driver::connect(service, grant("s-1"), config)
                .await
                .unwrap();
            let local = Local {
                input: input_rx,
                output: output_tx,
            };
            let result = driver.run(local, Some(ready_tx), &mut signals_rx).await;
            (result, driver.resumes)
        });
        within(ready).await.expect("session ready");
        Run {
            fake,
            control,
            target,
            input: Some(input),
            output,
            signals,
            done,
            _watchdog: watchdog,
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.fake.shared.lock().unwrap()
    }

    fn control(&self, c: Control) {
        self.control.send(c).unwrap();
    }

    async fn send(&self, data: &[u8]) {
        let input = self.input.as_ref().unwrap();
        for chunk in data.chunks(1000) {
            let data = Bytes::copy_from_slice(chunk);
            input.send(Input::Data(data)).await.unwrap();
        }
    }

    /// Local EOF.
    fn close_input(&mut self) {
        self.input = None;
    }

    /// Reads `n` bytes of output.
    async fn read(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            let b = within(self.output.recv()).await.expect("more output");
            got.extend_from_slice(&b);
        }
        got
    }

    /// Waits until the destination has `n` bytes, and returns them.
    async fn target_has(&self, n: usize) -> Vec<u8> {
        within(async {
            while self.target.lock().unwrap().len() < n {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        self.target.lock().unwrap().clone()
    }

    /// The session's end, when it comes.
    async fn end(self) -> (Result<Outcome, DriveError>, u32) {
        within(self.done).await.expect("driver task")
    }
}

/// A bound on every wait: ten virtual minutes.
async fn within<F: Future>(f: F) -> F::Output {
    timeout(Duration::from_secs(600), f)
        .await
        .expect("timed out")
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn config() -> DriverConfig {
    DriverConfig {
        eof_wait: Duration::from_secs(5),
        ..DriverConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_websocket_is_resumed_and_unacked_input_resent_in_order() {
    let mut run = Run::start(config(), 16).await;
    let up = bytes(200_000);
    let down = bytes(100_000);
    run.send(&up[..50_000]).await;
    run.target_has(50_000).await;
    // What the driver sends now reaches nobody: the cut drops it unread, unacked.
    run.control(Control::Mute);
    run.send(&up[50_000..]).await;
    sleep(Duration::from_secs(1)).await;
    run.control(Control::Cut);
    run.control(Control::Data(Bytes::copy_from_slice(&down)));
    sleep(Duration::from_millis(1)).await;
    let dropped = run.fake.cut_unread.load(Ordering::Relaxed);
    assert!(dropped >= 100, "only {dropped} frames were in flight");
    assert_eq!(run.read(down.len()).await, down);
    assert_eq!(run.target_has(up.len()).await, up);
    assert_eq!(run.shared().dials.len(), 2);
    assert_eq!(run.shared().resumes.len(), 1);
    run.control(Control::Eof);
    let (result, resumes) = run.end().await;
    assert_eq!(result.unwrap().end, End::Closed);
    assert_eq!(resumes, 1);
}

#[tokio::test(start_paused = true)]
async fn resume_session_backs_off_to_5_s_and_gives_up_after_resume_timeout() {
    let run = Run::start(
        DriverConfig {
            resume_timeout: Duration::from_secs(20),
            ..config()
        },
        16,
    )
    .await;
    run.shared().resume = Resume::Unreachable;
    let cut = Instant::now();
    run.control(Control::Cut);
    let fake = run.fake.clone();
    let (result, _) = run.end().await;
    let failed = cut.elapsed();
    let err = result.unwrap_err();
    assert!(matches!(err, DriveError::ResumeTimeout(20, _)), "{err}");
    assert_eq!(err.exit_code(), 69);
    let shared = fake.shared.lock().unwrap();
    let gaps: Vec<u128> = shared
        .resumes
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    // The last wait ends past the timeout: no ResumeSession after it.
    assert!(failed >= Duration::from_secs(20) && failed < Duration::from_secs(25));
    assert!(shared.terminates.is_empty());
}

#[tokio::test(start_paused = true)]
async fn resume_session_without_a_token_ends_the_session_as_gone() {
    let mut run = Run::start(config(), 16).await;
    let down = bytes(3000);
    run.control(Control::Data(Bytes::copy_from_slice(&down)));
    assert_eq!(run.read(down.len()).await, down);
    run.shared().resume = Resume::Gone;
    run.control(Control::Cut);
    let fake = run.fake.clone();
    let (result, resumes) = run.end().await;
    let outcome = result.unwrap();
    assert_eq!(
        (outcome.end, outcome.terminated, resumes),
        (End::Gone, false, 0)
    );
    let shared = fake.shared.lock().unwrap();
    assert_eq!(shared.resumes.len(), 1);
    assert!(shared.terminates.is_empty(), "nothing left to terminate");
}

#[tokio::test(start_paused = true)]
async fn websockets_that_die_empty_are_redialed_with_a_growing_delay() {
    let run = Run::start(config(), 16).await;
    run.shared().empty_links = usize::MAX;
    run.control(Control::Cut);
    sleep(Duration::from_secs(60)).await;
    let shared = run.shared();
    let gaps: Vec<u128> = shared
        .dials
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .skip(1)
        .collect();
    // 100 ms doubling to 5 s: 17 dials in the minute after the first empty one.
    assert_eq!(&gaps[..7], [100, 200, 400, 800, 1600, 3200, 5000]);
    assert!(gaps[7..].iter().all(|&g| g == 5000), "{gaps:?}");
    assert!(
        (15..=20).contains(&shared.dials.len()),
        "{}",
        shared.dials.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_websocket_silent_for_dead_after_is_replaced() {
    let mut run = Run::start(config(), 16).await;
    // An idle session stays up: the service answers pings. Muted between two pings (every
    // 10 s from the start), it was last heard 5 s before.
    sleep(Duration::from_secs(125)).await;
    assert_eq!(run.shared().dials.len(), 1);
    let muted = Instant::now();
    run.control(Control::Mute);
    within(async {
        while run.shared().dials.len() < 2 {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let after = run.shared().dials[1] - muted;
    let cfg = DriverConfig::default();
    assert!(
        after > cfg.dead_after && after <= cfg.dead_after + cfg.ping_interval,
        "{after:?}"
    );
    // And the session goes on over the new one.
    let down = bytes(5000);
    run.control(Control::Data(Bytes::copy_from_slice(&down)));
    assert_eq!(run.read(down.len()).await, down);
    run.control(Control::Eof);
    let (result, resumes) = run.end().await;
    assert_eq!((result.unwrap().end, resumes), (End::Closed, 1));
}

#[tokio::test(start_paused = true)]
async fn local_eof_terminates_the_session_after_eof_wait() {
    let mut run = Run::start(config(), 16).await;
    let up = bytes(10_000);
    run.send(&up).await;
    run.target_has(up.len()).await;
    let eof = Instant::now();
    run.close_input();
    let fake = run.fake.clone();
    let (result, _) = run.end().await;
    let outcome = result.unwrap();
    assert_eq!((outcome.end, outcome.terminated), (End::LocalEof, true));
    let shared = fake.shared.lock().unwrap();
    assert_eq!(shared.terminates.len(), 1);
    let waited = shared.terminates[0] - eof;
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_millis(5100));
}

#[tokio::test(start_paused = true)]
async fn channel_closed_within_eof_wait_ends_the_session_without_terminating() {
    let mut run = Run::start(config(), 16).await;
    run.send(&bytes(10_000)).await;
    run.target_has(10_000).await;
    run.close_input();
    sleep(Duration::from_secs(1)).await;
    run.control(Control::Eof);
    let fake = run.fake.clone();
    let (result, _) = run.end().await;
    let outcome = result.unwrap();
    assert_eq!((outcome.end, outcome.terminated), (End::Closed, false));
    assert!(fake.shared.lock().unwrap().terminates.is_empty());
}

/// Relay mode under ssh: SIGHUP is the hangup signal.
fn hangup_config() -> DriverConfig {
    DriverConfig {
        hangup: Some(1),
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn sighup_waits_for_the_agent_to_end_the_session() {
    let run = Run::start(hangup_config(), 16).await;
    run.signals.send(1).await.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert!(!run.done.is_finished(), "SIGHUP ended the session at once");
    run.control(Control::Eof);
    let fake = run.fake.clone();
    let (result, _) = run.end().await;
    assert_eq!(result.unwrap().end, End::Closed);
    assert!(fake.shared.lock().unwrap().terminates.is_empty());
}

#[tokio::test(start_paused = true)]
async fn sighup_ends_the_session_after_eof_wait_when_the_agent_does_not() {
    let run = Run::start(hangup_config(), 16).await;
    let hup = Instant::now();
    run.signals.send(1).await.unwrap();
    let fake = run.fake.clone();
    let (result, _) = run.end().await;
    let outcome = result.unwrap();
    assert_eq!((outcome.end, outcome.terminated), (End::Signal(1), true));
    let waited = fake.shared.lock().unwrap().terminates[0] - hup;
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_millis(5100));
}

#[tokio::test(start_paused = true)]
async fn a_signal_during_a_resume_ends_the_session_at_once() {
    let run = Run::start(config(), 16).await;
    run.shared().resume = Resume::Unreachable;
    run.control(Control::Cut);
    sleep(Duration::from_secs(3)).await;
    assert!(!run.shared().resumes.is_empty(), "not resuming yet");
    let sent = Instant::now();
    run.signals.send(15).await.unwrap();
    let fake = run.fake.clone();
    let (result, _) = run.end().await;
    assert_eq!(result.unwrap().end, End::Signal(15));
    let shared = fake.shared.lock().unwrap();
    assert_eq!(shared.terminates.len(), 1);
    assert!(shared.terminates[0] - sent < Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_local_reader_stops_websocket_reads_without_losing_bytes() {
    let mut run = Run::start(config(), 1).await;
    let down = bytes(4 << 20);
    for chunk in down.chunks(64 * 1024) {
        run.control(Control::Data(Bytes::copy_from_slice(chunk)));
    }
    sleep(Duration::from_secs(5)).await;
    let read = run.fake.read.load(Ordering::Relaxed);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(run.fake.read.load(Ordering::Relaxed), read, "still reading");
    assert!(read < 2048, "read {read} of 4096+ messages");
    // Not reading is not silence: no reconnect.
    assert_eq!(run.shared().dials.len(), 1);
    assert_eq!(run.read(down.len()).await, down);
    run.control(Control::Eof);
    let (result, resumes) = run.end().await;
    assert_eq!((result.unwrap().end, resumes), (End::Closed, 0));
}
