//! A client [`Session`] and an [`Agent`] joined by a simulated link on a virtual clock (quinn's
//! `Pair`): deterministic by seed, fast, and able to lose, duplicate, reorder, corrupt and cut
//! the link. Both ends move a byte stream, so a run checks byte-exact delivery both ways.
//!
//! [`Pair`] is steppable: a test feeds bytes in at either end, steps or drives the clock, cuts and
//! restores the link, tampers with single frames, and looks at what each end received. [`run`]
//! is the one scenario the sweeps and benchmarks repeat: both streams, optional periodic cuts.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::agent::{Agent, AgentConfig, AgentEvent};
use super::faults::{FaultPlan, Faults};
use super::frames::channel_closed;
use super::rng::Rng;
use crate::proto::{Event, Session, SessionConfig};

/// Messages the link holds towards the client before the agent's writes block.
const LINK_BUFFER: usize = 256;

/// A message in flight: (arrival time, tie-breaker, bytes).
type InFlight = Reverse<(Instant, u64, Bytes)>;

/// How a simulated run is set up.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// Seed for everything random.
    pub seed: u64,
    /// Client → agent faults.
    pub up: FaultPlan,
    /// Agent → client faults.
    pub down: FaultPlan,
    /// Bytes the client sends.
    pub upload: usize,
    /// Bytes the destination sends back.
    pub download: usize,
    /// Cut the link (everything in flight lost, then reconnect) every this often.
    pub disconnect_every: Option<Duration>,
    /// How long a cut lasts.
    pub outage: Duration,
    /// Client output drained per millisecond (a slow reader), unlimited when None.
    pub reader_bytes_per_ms: Option<usize>,
    /// Bytes the agent's destination absorbs per millisecond (a slow server), unlimited when None.
    pub target_bytes_per_ms: Option<usize>,
    /// Give up after this much virtual time.
    pub time_limit: Duration,
    /// Encrypt the session with KMS (§6); the pair plays KMS itself.
    pub kms: bool,
    /// Use the fast agent of benchmarks instead of the faithful one (see `AgentConfig::fast`).
    pub fast_agent: bool,
    /// Feed the client frames even when it does not want them, and refuse past 1 MiB: the
    /// client before backpressure, for comparisons.
    pub ignore_backpressure: bool,
}

impl Default for PairConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            up: FaultPlan::default(),
            down: FaultPlan::default(),
            upload: 64 * 1024,
            download: 64 * 1024,
            disconnect_every: None,
            outage: Duration::from_millis(300),
            reader_bytes_per_ms: None,
            target_bytes_per_ms: None,
            time_limit: Duration::from_secs(600),
            kms: false,
            fast_agent: false,
            ignore_backpressure: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct PairReport {
    /// Bytes that reached the destination, in order.
    pub received_by_target: Vec<u8>,
    /// Bytes that reached the client's output, in order.
    pub received_by_client: Vec<u8>,
    /// Virtual time taken.
    pub elapsed: Duration,
    /// Client retransmissions.
    pub client_retransmissions: u64,
    /// Agent retransmissions.
    pub agent_retransmissions: u64,
    /// Link cuts survived.
    pub reconnects: u32,
    /// Frames the client rejected (bad digest).
    pub bad_frames: u64,
    /// Largest out-of-order + undelivered output the client held, in bytes.
    pub max_client_buffered: usize,
    /// Failure or close event, if any.
    pub ended: Option<Event>,
}

/// Deterministic pseudo-random bytes for a stream.
pub fn stream_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Rewrites what one end sends before the link's faults apply: the copies to send (none drops
/// the frame, two duplicate it).
pub type Tamper = Box<dyn FnMut(Bytes) -> Vec<Bytes>>;

/// Steps a scenario may take without time passing (each does some work) before [`run`] or
/// [`Pair::drive_until`] gives up.
const MAX_STEPS: u64 = 50_000_000;

/// One direction of the link: tampering, then the fault plan, then frames in flight.
struct Link {
    faults: Faults,
    tamper: Option<Tamper>,
    in_flight: BinaryHeap<InFlight>,
    tie: u64,
}

impl Link {
    fn new(plan: FaultPlan, seed: u64) -> Self {
        Self {
            faults: Faults::new(plan, seed),
            tamper: None,
            in_flight: BinaryHeap::new(),
            tie: 0,
        }
    }

    /// What to deliver for one frame, each copy with its extra delay.
    fn apply(&mut self, frame: Bytes) -> Vec<(Duration, Bytes)> {
        let copies = match self.tamper.as_mut() {
            Some(tamper) => tamper(frame),
            None => vec![frame],
        };
        copies
            .into_iter()
            .flat_map(|f| self.faults.apply(f))
            .collect()
    }

    fn push(&mut self, at: Instant, frame: Bytes) {
        self.tie += 1;
        self.in_flight.push(Reverse((at, self.tie, frame)));
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|r| r.0.0)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Bytes> {
        if self.next_arrival()? > now {
            return None;
        }
        self.in_flight.pop().map(|Reverse((_, _, frame))| frame)
    }
}

/// A client [`Session`] and an [`Agent`] on a simulated link and a virtual clock, moved one
/// round at a time ([`Pair::step`]) or until a condition holds ([`Pair::drive_until`]).
///
/// The client's input and the destination's output are fed in as bytes; the client's output is
/// read at [`Pair::set_reader`]'s rate. The pair plays the service (it queues the agent's frames
/// while the client is away and sends `channel_closed` when the agent finishes) and KMS.
pub struct Pair {
    /// The client end, for direct inspection or input.
    pub client: Session,
    /// The agent end.
    pub agent: Agent,
    epoch: Instant,
    time: Instant,
    latency: Duration,
    up: Link,
    down: Link,
    /// Agent frames the service keeps while the link is cut: (extra delay, frame).
    held_for_client: Vec<(Duration, Bytes)>,
    cut: bool,
    back_at: Option<Instant>,
    input: BytesMut,
    target_data: BytesMut,
    target_closing: bool,
    reader: Option<usize>,
    target_rate: Option<usize>,
    fast_agent: bool,
    ignore_backpressure: bool,
    data_key: Vec<u8>,
    data_keys: u32,
    ready: bool,
    target_up: bool,
    drain_credit: usize,
    target_unwritten: usize,
    next_read: Instant,
    ended: Option<Event>,
    received_by_client: Vec<u8>,
    received_by_target: Vec<u8>,
    reconnects: u32,
    max_client_buffered: usize,
}

impl Pair {
    /// Both ends and the link as `cfg` sets them up (seed, faults, rates, KMS, which agent); the
    /// data channel is open and the agent has started. The streams and cuts of `cfg` are
    /// [`run`]'s: a pair starts with nothing to send and an intact link.
    pub fn new(cfg: &PairConfig) -> Self {
        let now = Instant::now();
        let mut session_cfg = SessionConfig {
            seed: cfg.seed,
            ready_timeout: cfg.time_limit,
            ..Default::default()
        };
        if cfg.ignore_backpressure {
            session_cfg.output_hard_limit = session_cfg.output_limit;
        }
        let agent_cfg = AgentConfig {
            seed: cfg.seed.wrapping_add(7),
            kms_key: cfg.kms.then(|| "alias/pair".to_owned()),
            fast: cfg.fast_agent,
            ..Default::default()
        };
        let mut agent = Agent::new(agent_cfg, now);
        agent.start(now);
        Self {
            client: Session::new(session_cfg, now),
            agent,
            epoch: now,
            time: now,
            latency: Duration::from_micros(500),
            up: Link::new(cfg.up.clone(), cfg.seed.wrapping_mul(3) | 1),
            down: Link::new(cfg.down.clone(), cfg.seed.wrapping_mul(5) | 1),
            held_for_client: Vec::new(),
            cut: false,
            back_at: None,
            input: BytesMut::new(),
            target_data: BytesMut::new(),
            target_closing: false,
            reader: cfg.reader_bytes_per_ms,
            target_rate: cfg.target_bytes_per_ms,
            fast_agent: cfg.fast_agent,
            ignore_backpressure: cfg.ignore_backpressure,
            data_key: stream_bytes(cfg.seed ^ 0x4b4d53, 64),
            data_keys: 0,
            ready: false,
            target_up: false,
            drain_credit: 0,
            target_unwritten: 0,
            next_read: now,
            ended: None,
            received_by_client: Vec::new(),
            received_by_target: Vec::new(),
            reconnects: 0,
            max_client_buffered: 0,
        }
    }

    /// Bytes the client's user types (sent once the session is ready, 4 KiB at a time).
    pub fn client_input(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// Bytes the agent's destination sends (read 1 KiB at a time).
    pub fn target_output(&mut self, data: &[u8]) {
        self.target_data.extend_from_slice(data);
    }

    /// The destination closes once what it sent has been read.
    pub fn target_eof(&mut self) {
        self.target_closing = true;
    }

    /// How fast the client's output is read, in bytes per millisecond: unlimited when None,
    /// stalled at `Some(0)`.
    pub fn set_reader(&mut self, bytes_per_ms: Option<usize>) {
        self.reader = bytes_per_ms;
    }

    /// Rewrites every client frame before the up link's faults.
    pub fn tamper_up(&mut self, tamper: impl FnMut(Bytes) -> Vec<Bytes> + 'static) {
        self.up.tamper = Some(Box::new(tamper));
    }

    /// Rewrites every agent frame before the down link's faults.
    pub fn tamper_down(&mut self, tamper: impl FnMut(Bytes) -> Vec<Bytes> + 'static) {
        self.down.tamper = Some(Box::new(tamper));
    }

    /// Cuts the link: what is in flight is lost, the client's frames go nowhere and the service
    /// keeps the agent's until [`Pair::reconnect`].
    pub fn cut(&mut self) {
        self.up.in_flight.clear();
        self.down.in_flight.clear();
        self.cut = true;
    }

    /// Cuts the link and reconnects after `outage` of virtual time.
    pub fn cut_for(&mut self, outage: Duration) {
        self.cut();
        self.back_at = Some(self.time + outage);
    }

    /// The client's new websocket is up: both ends are told and the kept frames go out.
    pub fn reconnect(&mut self) {
        self.cut = false;
        self.back_at = None;
        self.reconnects += 1;
        self.client.handle_reconnect(self.time);
        self.agent.handle_client_reconnect(self.time);
        for (delay, frame) in std::mem::take(&mut self.held_for_client) {
            self.down.push(self.time + self.latency + delay, frame);
        }
    }

    /// One round: each end takes the frames that have arrived, runs its due timers and sends,
    /// then the clock moves to the next thing that happens. False when nothing ever will.
    pub fn step(&mut self) -> bool {
        self.step_until(None)
    }

    /// [`Pair::step`], with the clock stopping at `limit` if that comes first.
    pub fn step_until(&mut self, limit: Option<Instant>) -> bool {
        self.drive_client();
        self.drive_agent();
        match self.next_wakeup().into_iter().chain(limit).min() {
            Some(next) => {
                self.advance_to(next);
                true
            }
            None => false,
        }
    }

    /// Steps until `done` holds or `within` of virtual time has passed; whether `done` holds.
    pub fn drive_until(&mut self, within: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.time + within;
        for _ in 0..MAX_STEPS {
            if done(self) {
                return true;
            }
            if self.time >= end || !self.step_until(Some(end)) {
                break;
            }
        }
        done(self)
    }

    /// Steps until everything sent is delivered and acknowledged, or the session ended (at most
    /// ten minutes of virtual time); whether it settled.
    pub fn drive(&mut self) -> bool {
        self.drive_until(Duration::from_secs(600), Self::is_settled)
    }

    /// Lets `d` of virtual time pass, both ends working as usual.
    pub fn advance_time(&mut self, d: Duration) {
        let end = self.time + d;
        self.drive_until(d, |p| p.time >= end);
    }

    fn drive_client(&mut self) {
        let now = self.time;
        while self.client_takes_frames()
            && let Some(frame) = self.down.pop_due(now)
        {
            self.client.handle_frame(now, frame);
        }
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        self.client_events();
        if self.ready && !self.input.is_empty() && !self.cut && self.client.can_accept_input() {
            let n = self.input.len().min(4096);
            self.client
                .handle_input(now, self.input.split_to(n).freeze());
        }
        self.read_client_output();
        self.max_client_buffered = self.max_client_buffered.max(self.client.pending_output());
        while let Some(frame) = self.client.poll_transmit() {
            if !self.cut {
                for (delay, m) in self.up.apply(frame) {
                    self.up.push(now + self.latency + delay, m);
                }
            }
        }
    }

    fn client_events(&mut self) {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                Event::Ready { .. } => self.ready = true,
                Event::Closed { .. } | Event::Failed(_) => {
                    self.ended.get_or_insert(ev);
                }
                // The pair's KMS: the data key's "ciphertext" is the key itself.
                Event::DataKeyNeeded { .. } => {
                    self.data_keys += 1;
                    self.client
                        .set_data_key(self.time, &self.data_key, &self.data_key);
                }
                _ => {}
            }
        }
    }

    fn read_client_output(&mut self) {
        let budget = match self.reader {
            Some(_) => self.drain_credit,
            None => usize::MAX,
        };
        // poll_output hands out at least one whole message: wait for credit for one.
        if budget < 1024 {
            return;
        }
        if let Some(out) = self.client.poll_output(budget.min(64 * 1024)) {
            self.drain_credit = self.drain_credit.saturating_sub(out.len());
            self.received_by_client.extend_from_slice(&out);
        }
    }

    fn drive_agent(&mut self) {
        let now = self.time;
        while self.agent.can_take_frames()
            && let Some(frame) = self.up.pop_due(now)
        {
            self.agent.handle_frame(now, &frame);
        }
        // A blocked websocket write blocks the agent's resends too (§16.3).
        if !self.link_full() && self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
        }
        self.agent_events();
        if self.reading() && self.read_due() {
            let n = self.target_data.len().min(1024);
            let data = self.target_data.split_to(n).freeze();
            self.agent.handle_target_data(now, data);
            self.next_read = now + Duration::from_millis(1);
        }
        if self.target_closing && self.target_up && self.target_data.is_empty() {
            self.target_closing = false;
            self.agent.handle_target_eof(now);
        }
        while let Some(frame) = self.agent.poll_transmit() {
            let copies = self.down.apply(frame);
            self.send_to_client(copies);
        }
        // After the frames it sent: `Finished` becomes the service's channel_closed.
        self.agent_events();
    }

    fn agent_events(&mut self) {
        while let Some(ev) = self.agent.poll_event() {
            match ev {
                AgentEvent::Dial => {
                    self.agent.handle_target_connected();
                    self.target_up = true;
                }
                AgentEvent::ToTarget(b) => {
                    self.received_by_target.extend_from_slice(&b);
                    match self.target_rate {
                        Some(_) => self.target_unwritten += b.len(),
                        None => self.agent.handle_target_written(b.len()),
                    }
                }
                AgentEvent::DecryptKey { blob, .. } => self.agent.set_data_key(self.time, Ok(blob)),
                // The service ends the session for the client (§9.2), past the link's faults.
                AgentEvent::Finished(output) => {
                    let closed = channel_closed("i-0pair", "pair-session", &output);
                    self.send_to_client(vec![(Duration::ZERO, closed)]);
                }
                AgentEvent::CloseTarget | AgentEvent::Resize(_) | AgentEvent::ToService(_) => {}
            }
        }
    }

    /// While the client is away the service keeps the agent's frames (as MGS and realagent's
    /// relay do) and delivers them on the next connection.
    fn send_to_client(&mut self, copies: Vec<(Duration, Bytes)>) {
        for (delay, frame) in copies {
            match self.cut {
                true => self.held_for_client.push((delay, frame)),
                false => self.down.push(self.time + self.latency + delay, frame),
            }
        }
    }

    /// The agent's websocket writes block once the socket buffers towards the client are full
    /// (about 256 messages): then it neither reads its destination nor resends (§16.3).
    fn link_full(&self) -> bool {
        self.down.in_flight.len() + self.held_for_client.len() >= LINK_BUFFER
    }

    fn reading(&self) -> bool {
        self.target_up
            && !self.link_full()
            && !self.target_data.is_empty()
            && self.agent.can_read_target()
    }

    /// The faithful agent reads 1 KiB per millisecond whatever the acks (§16.3).
    fn read_due(&self) -> bool {
        self.fast_agent || self.time >= self.next_read
    }

    /// A side that does not take frames leaves them queued on the link (backpressure).
    fn client_takes_frames(&self) -> bool {
        self.ignore_backpressure || self.client.wants_frames()
    }

    /// When the next thing happens: now if an end has work, else the earliest arrival or timer.
    fn next_wakeup(&self) -> Option<Instant> {
        let now = self.time;
        let reading = self.reading();
        let work_now =
            (self.ready && !self.input.is_empty() && !self.cut && self.client.can_accept_input())
                || (reading && self.read_due())
                || (self.client.pending_output() > 0 && self.reader.is_none());
        if work_now {
            return Some(now);
        }
        let tick = now + Duration::from_millis(1);
        let reader = self
            .reader
            .filter(|&r| r > 0 && self.client.pending_output() > 0);
        let writer = self
            .target_rate
            .filter(|&r| r > 0 && self.target_unwritten > 0);
        [
            self.up
                .next_arrival()
                .filter(|_| self.agent.can_take_frames()),
            self.down
                .next_arrival()
                .filter(|_| self.client_takes_frames()),
            reading.then_some(self.next_read),
            self.client.poll_timeout(),
            self.agent.poll_timeout().filter(|_| !self.link_full()),
            self.back_at,
            reader.or(writer).map(|_| tick),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(now))
    }

    /// Moves the clock, crediting the reader and the destination's writes for the time passed.
    fn advance_to(&mut self, next: Instant) {
        let next = next.max(self.time);
        let ms = (next - self.time)
            .as_millis()
            .max(u128::from(next > self.time)) as usize;
        if let Some(rate) = self.reader {
            self.drain_credit = self.drain_credit.saturating_add(rate.saturating_mul(ms));
        }
        if let Some(rate) = self.target_rate {
            let n = self.target_unwritten.min(rate.saturating_mul(ms));
            self.target_unwritten -= n;
            self.agent.handle_target_written(n);
        }
        self.time = next;
        if self.back_at.is_some_and(|t| next >= t) {
            self.reconnect();
        }
    }

    /// Whether everything fed in was delivered and acknowledged, or the session ended.
    pub fn is_settled(&self) -> bool {
        self.ended.is_some()
            || (self.input.is_empty()
                && self.target_data.is_empty()
                && self.client.pending_output() == 0
                && self.client.all_acked()
                && self.target_unwritten == 0
                && self.up.in_flight.is_empty()
                && self.down.in_flight.is_empty()
                && self.held_for_client.is_empty())
    }

    /// The virtual clock.
    pub fn time(&self) -> Instant {
        self.time
    }

    /// Virtual time since the pair was made.
    pub fn elapsed(&self) -> Duration {
        self.time - self.epoch
    }

    /// Whether the client reported the session ready.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The client's `Closed` or `Failed` event, once there is one.
    pub fn ended(&self) -> Option<&Event> {
        self.ended.as_ref()
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Bytes the client's output delivered so far.
    pub fn received_by_client(&self) -> &[u8] {
        &self.received_by_client
    }

    /// Bytes the destination received so far.
    pub fn received_by_target(&self) -> &[u8] {
        &self.received_by_target
    }

    /// Client frames on their way to the agent.
    pub fn in_flight_to_agent(&self) -> impl Iterator<Item = &Bytes> {
        self.up.in_flight.iter().map(|r| &r.0.2)
    }

    /// Agent frames on their way to the client (not those kept during a cut).
    pub fn in_flight_to_client(&self) -> impl Iterator<Item = &Bytes> {
        self.down.in_flight.iter().map(|r| &r.0.2)
    }

    /// Data keys the pair's KMS gave the client.
    pub fn data_keys(&self) -> u32 {
        self.data_keys
    }

    /// What the run did.
    pub fn report(self) -> PairReport {
        PairReport {
            elapsed: self.elapsed(),
            client_retransmissions: self.client.retransmissions(),
            agent_retransmissions: self.agent.retransmissions(),
            bad_frames: self.client.stats().bad_frames,
            reconnects: self.reconnects,
            max_client_buffered: self.max_client_buffered,
            ended: self.ended,
            received_by_client: self.received_by_client,
            received_by_target: self.received_by_target,
        }
    }
}

/// Runs one session to completion (both streams delivered) or to the time limit: `cfg.upload`
/// bytes up, `cfg.download` bytes down, the link cut every `cfg.disconnect_every`.
pub fn run(cfg: &PairConfig) -> PairReport {
    let mut pair = Pair::new(cfg);
    pair.client_input(&stream_bytes(cfg.seed ^ 0xaaaa, cfg.upload));
    pair.target_output(&stream_bytes(cfg.seed ^ 0x5555, cfg.download));
    let mut next_cut = cfg.disconnect_every.map(|d| pair.time() + d);
    for _ in 0..MAX_STEPS {
        let done = pair.received_by_target().len() == cfg.upload
            && pair.received_by_client().len() == cfg.download
            && pair.client.all_acked();
        if done || pair.ended().is_some() || pair.elapsed() > cfg.time_limit {
            break;
        }
        if !pair.step_until(next_cut) {
            break;
        }
        if next_cut.is_some_and(|t| pair.time() >= t) {
            pair.cut_for(cfg.outage);
            next_cut = cfg.disconnect_every.map(|d| pair.time() + cfg.outage + d);
        }
    }
    pair.report()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cfg: &PairConfig) -> PairReport {
        let r = run(cfg);
        assert!(
            r.ended.is_none(),
            "seed {}: ended early: {:?}",
            cfg.seed,
            r.ended
        );
        assert_eq!(
            r.received_by_target.len(),
            cfg.upload,
            "seed {}: upload length",
            cfg.seed
        );
        assert_eq!(
            r.received_by_client.len(),
            cfg.download,
            "seed {}: download length",
            cfg.seed
        );
        assert!(
            r.received_by_target == stream_bytes(cfg.seed ^ 0xaaaa, cfg.upload),
            "seed {}",
            cfg.seed
        );
        assert!(
            r.received_by_client == stream_bytes(cfg.seed ^ 0x5555, cfg.download),
            "seed {}",
            cfg.seed
        );
        r
    }

    #[test]
    fn clean_link_delivers_both_ways() {
        let r = check(&PairConfig::default());
        assert_eq!(r.client_retransmissions, 0);
    }

    #[test]
    fn lossy_link_delivers_both_ways() {
        let bad = FaultPlan {
            loss_ppm: 50_000,
            dup_ppm: 20_000,
            reorder_ppm: 50_000,
            corrupt_ppm: 10_000,
            ..Default::default()
        };
        let r = check(&PairConfig {
            up: bad.clone(),
            down: bad,
            ..Default::default()
        });
        assert!(r.client_retransmissions > 0);
    }

    #[test]
    fn kms_encrypted_session_delivers_both_ways() {
        let bad = FaultPlan {
            loss_ppm: 20_000,
            reorder_ppm: 20_000,
            ..Default::default()
        };
        check(&PairConfig {
            kms: true,
            up: bad.clone(),
            down: bad,
            ..Default::default()
        });
    }

    /// Retransmissions per MiB downloaded into a slow reader from the faithful agent, with the
    /// client refusing past 1 MiB (before) and with backpressure (after).
    #[test]
    fn slow_reader_retransmissions_per_mib() {
        let mib = 4;
        let run_with = |ignore_backpressure| {
            let cfg = PairConfig {
                upload: 1024,
                download: mib << 20,
                reader_bytes_per_ms: Some(32),
                ignore_backpressure,
                time_limit: Duration::from_secs(3600),
                ..Default::default()
            };
            let r = run(&cfg);
            let per_mib = (r.agent_retransmissions + r.client_retransmissions) as f64 / mib as f64;
            eprintln!(
                "ignore_backpressure={ignore_backpressure}: {} of {} B in {:?}, {per_mib:.1} retransmissions/MiB",
                r.received_by_client.len(),
                cfg.download,
                r.elapsed
            );
            (r, per_mib)
        };
        // Both deliver; the numbers are for the record (the faithful agent resends its oldest
        // message every tick while the slow reader has not acked it, whichever the client).
        let (before, _) = run_with(true);
        let (after, _) = run_with(false);
        assert_eq!(before.received_by_client.len(), mib << 20);
        assert_eq!(after.received_by_client.len(), mib << 20);
        assert!(after.max_client_buffered <= SessionConfig::default().output_limit + 1024);
    }

    #[test]
    fn link_cuts_are_survived() {
        let r = check(&PairConfig {
            disconnect_every: Some(Duration::from_millis(4)),
            outage: Duration::from_millis(10),
            upload: 2 << 20,
            download: 2 << 20,
            ..Default::default()
        });
        assert!(r.reconnects > 0, "elapsed {:?}", r.elapsed);
    }
}

/// Scenarios written against the steppable [`Pair`]: each places an event exactly where a knob
/// of [`run`] could not.
#[cfg(test)]
mod scenarios {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;
    use crate::proto::frame::{PayloadType, ptype};
    use crate::proto::{Frame, MessageType, SessionError};

    const SECOND: Duration = Duration::from_secs(1);

    fn decoded(raw: &Bytes) -> Option<Frame> {
        Frame::decode(raw).ok()
    }

    fn carries(raw: &Bytes, payload_type: PayloadType) -> bool {
        decoded(raw).is_some_and(|f| {
            f.payload_type == payload_type
                && matches!(
                    f.message_type,
                    MessageType::OutputStreamData | MessageType::InputStreamData
                )
        })
    }

    fn delivered(pair: &Pair, up: &[u8], down: &[u8]) -> bool {
        pair.received_by_target().len() >= up.len() && pair.received_by_client().len() >= down.len()
    }

    /// Feeds both streams, drives them through and checks them byte for byte.
    fn transfer(pair: &mut Pair, seed: u64, len: usize) {
        let (up, down) = (stream_bytes(seed, len), stream_bytes(seed + 1, len));
        pair.client_input(&up);
        pair.target_output(&down);
        let ok = pair.drive_until(60 * SECOND, |p| {
            delivered(p, &up, &down) || p.ended().is_some()
        });
        assert!(ok && pair.ended().is_none(), "ended: {:?}", pair.ended());
        assert!(pair.received_by_target() == &up[..], "upload differs");
        assert!(pair.received_by_client() == &down[..], "download differs");
    }

    #[test]
    fn a_cut_while_the_handshake_response_is_in_flight_is_survived() {
        let mut pair = Pair::new(&PairConfig::default());
        let response_in_flight = |p: &Pair| {
            p.in_flight_to_agent()
                .any(|f| carries(f, ptype::HANDSHAKE_RESPONSE))
        };
        assert!(pair.drive_until(SECOND, response_in_flight));
        pair.cut();
        pair.advance_time(2 * SECOND);
        assert!(
            !pair.is_ready(),
            "no HandshakeComplete can have crossed a cut link"
        );
        pair.reconnect();
        transfer(&mut pair, 10, 20_000);
    }

    #[test]
    fn a_cut_while_the_handshake_request_is_in_flight_is_survived() {
        let mut pair = Pair::new(&PairConfig::default());
        let request_in_flight = |p: &Pair| {
            p.in_flight_to_client()
                .any(|f| carries(f, ptype::HANDSHAKE_REQUEST))
        };
        assert!(pair.drive_until(SECOND, request_in_flight));
        pair.cut_for(3 * SECOND);
        pair.advance_time(2 * SECOND);
        assert!(!pair.is_ready() && pair.is_cut());
        transfer(&mut pair, 20, 20_000);
    }

    #[test]
    fn duplicated_acks_are_harmless_both_ways() {
        // Some loss, so that an end that took a duplicate ack for another message's would
        // never resend that one.
        let lossy = FaultPlan {
            drop_every: 17,
            ..Default::default()
        };
        let mut pair = Pair::new(&PairConfig {
            up: lossy.clone(),
            down: lossy,
            ..Default::default()
        });
        let dups = Rc::new(Cell::new(0u32));
        let double_acks = |dups: Rc<Cell<u32>>| {
            move |f: Bytes| match decoded(&f).map(|d| d.message_type) {
                Some(MessageType::Acknowledge) => {
                    dups.set(dups.get() + 1);
                    vec![f.clone(), f]
                }
                _ => vec![f],
            }
        };
        pair.tamper_up(double_acks(dups.clone()));
        pair.tamper_down(double_acks(dups.clone()));
        transfer(&mut pair, 30, 200_000);
        assert!(dups.get() > 100, "only {} acks duplicated", dups.get());
    }

    #[test]
    fn channel_closed_while_a_gap_is_held_reports_output_missing() {
        let mut pair = Pair::new(&PairConfig::default());
        assert!(pair.drive_until(SECOND, Pair::is_ready));
        // Seq 0 and 1 are the HandshakeRequest and HandshakeComplete: seq 4 is the third output
        // message. Every copy of it is lost, resends included.
        pair.tamper_down(|f| match decoded(&f) {
            Some(d) if d.message_type == MessageType::OutputStreamData && d.sequence == 4 => {
                vec![]
            }
            _ => vec![f],
        });
        pair.target_output(&stream_bytes(40, 8 * 1024));
        pair.target_eof();
        assert!(pair.drive_until(10 * SECOND, |p| p.ended().is_some()));
        assert_eq!(
            pair.ended(),
            Some(&Event::Failed(SessionError::OutputMissing(4)))
        );
        assert_eq!(pair.received_by_client(), &stream_bytes(40, 2 * 1024)[..]);
    }

    #[test]
    fn a_stalled_reader_resumes_after_thirty_virtual_seconds_byte_exact() {
        let mut pair = Pair::new(&PairConfig::default());
        let download = stream_bytes(50, 8 << 20);
        pair.set_reader(Some(0));
        pair.target_output(&download);
        pair.advance_time(30 * SECOND);
        assert!(pair.received_by_client().is_empty() && pair.ended().is_none());
        let limits = SessionConfig::default();
        let held = pair.client.pending_output();
        assert!(
            held >= limits.output_limit,
            "the stalled client took only {held} bytes"
        );
        assert!(pair.max_client_buffered <= limits.output_limit + limits.reorder_limit);
        pair.set_reader(None);
        let all = |p: &Pair| p.received_by_client().len() >= download.len();
        assert!(pair.drive_until(120 * SECOND, all), "{:?}", pair.ended());
        assert!(pair.received_by_client() == &download[..]);
    }

    #[test]
    fn a_kms_session_survives_a_cut_after_its_handshake() {
        let mut pair = Pair::new(&PairConfig {
            kms: true,
            ..Default::default()
        });
        assert!(pair.drive_until(SECOND, Pair::is_ready));
        assert_eq!(
            pair.data_keys(),
            1,
            "the handshake asked for a KMS data key"
        );
        // Enough that most of both streams is sealed and opened after the reconnect.
        let (up, down) = (stream_bytes(60, 1 << 20), stream_bytes(61, 1 << 20));
        pair.client_input(&up);
        pair.target_output(&down);
        assert!(pair.drive_until(SECOND, |p| p.received_by_client().len() > 10_000));
        pair.cut_for(SECOND / 10);
        assert!(pair.drive_until(60 * SECOND, |p| delivered(p, &up, &down)));
        assert!(pair.ended().is_none(), "{:?}", pair.ended());
        assert!(pair.received_by_target() == &up[..] && pair.received_by_client() == &down[..]);
        assert_eq!(pair.reconnects, 1);
    }
}
