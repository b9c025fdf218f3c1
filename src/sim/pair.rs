//! A client [`Session`] and an [`Agent`] joined by a simulated link on a virtual clock (quinn's
//! `Pair`): deterministic by seed, fast, and able to lose, duplicate, reorder, corrupt and cut
//! the link. Both ends move a byte stream, so a run checks byte-exact delivery both ways.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::agent::{Agent, AgentConfig, AgentEvent};
use super::faults::{FaultPlan, Faults};
use crate::proto::session::splitmix;
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
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs one session to completion (both streams delivered) or to the time limit.
pub fn run(cfg: &PairConfig) -> PairReport {
    let t0 = Instant::now();
    let mut now = t0;
    let mut session_cfg = SessionConfig {
        seed: cfg.seed,
        ready_timeout: cfg.time_limit,
        ..Default::default()
    };
    if cfg.ignore_backpressure {
        session_cfg.output_hard_limit = session_cfg.output_limit;
    }
    let takes = |client: &Session| cfg.ignore_backpressure || client.wants_frames();
    let mut client = Session::new(session_cfg, now);
    let agent_cfg = AgentConfig {
        seed: cfg.seed.wrapping_add(7),
        kms_key: cfg.kms.then(|| "alias/pair".to_owned()),
        fast: cfg.fast_agent,
        ..Default::default()
    };
    let mut agent = Agent::new(agent_cfg, now);
    agent.start(now);
    let mut up = Faults::new(cfg.up.clone(), cfg.seed.wrapping_mul(3) | 1);
    let mut down = Faults::new(cfg.down.clone(), cfg.seed.wrapping_mul(5) | 1);
    let mut to_agent: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut to_client: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut tie = 0u64;
    let upload = Bytes::from(stream_bytes(cfg.seed ^ 0xaaaa, cfg.upload));
    let download = Bytes::from(stream_bytes(cfg.seed ^ 0x5555, cfg.download));
    let (mut up_pos, mut down_pos) = (0usize, 0usize);
    let mut report = PairReport::default();
    let mut ready = false;
    let mut target_up = false;
    let mut link_up_at: Option<Instant> = None;
    let mut next_cut = cfg.disconnect_every.map(|d| t0 + d);
    let mut drain_credit = 0usize;
    let mut target_unwritten = 0usize;
    let latency = Duration::from_micros(500);
    // The faithful agent reads 1 KiB per millisecond whatever the acks (§16.3).
    let mut next_read = t0;
    let read_due = |now: Instant, next_read: Instant| cfg.fast_agent || now >= next_read;

    for _ in 0..50_000_000u64 {
        // Client side.
        while let Some(ev) = client.poll_event() {
            match ev {
                Event::Ready { .. } => ready = true,
                Event::Closed { .. } | Event::Failed(_) => report.ended = Some(ev),
                Event::DataKeyNeeded { .. } => {
                    let key = stream_bytes(cfg.seed ^ 0x4b4d53, 64);
                    client.set_data_key(now, &key, &key);
                }
                _ => {}
            }
        }
        if ready && up_pos < upload.len() && link_up_at.is_none() && client.can_accept_input() {
            let n = (upload.len() - up_pos).min(4096);
            client.handle_input(now, upload.slice(up_pos..up_pos + n));
            up_pos += n;
        }
        let budget = match cfg.reader_bytes_per_ms {
            Some(_) => drain_credit,
            None => usize::MAX,
        };
        // poll_output hands out at least one whole message: wait for credit for one.
        if let Some(out) = (budget >= 1024)
            .then(|| client.poll_output(budget.min(64 * 1024)))
            .flatten()
        {
            drain_credit = drain_credit.saturating_sub(out.len());
            report.received_by_client.extend_from_slice(&out);
        }
        report.max_client_buffered = report.max_client_buffered.max(client.pending_output());
        while let Some(f) = client.poll_transmit() {
            if link_up_at.is_none() {
                for (d, m) in up.apply(f) {
                    tie += 1;
                    to_agent.push(Reverse((now + latency + d, tie, m)));
                }
            }
        }
        // Agent side.
        while let Some(ev) = agent.poll_event() {
            match ev {
                AgentEvent::Dial => {
                    agent.handle_target_connected();
                    target_up = true;
                }
                AgentEvent::ToTarget(b) => {
                    report.received_by_target.extend_from_slice(&b);
                    match cfg.target_bytes_per_ms {
                        Some(_) => target_unwritten += b.len(),
                        None => agent.handle_target_written(b.len()),
                    }
                }
                // The pair's KMS: the "blob" is the key itself.
                AgentEvent::DecryptKey { blob, .. } => agent.set_data_key(now, Ok(blob)),
                AgentEvent::CloseTarget
                | AgentEvent::Finished(_)
                | AgentEvent::Resize(_)
                | AgentEvent::ToService(_) => {}
            }
        }
        // The agent's websocket writes block once the socket buffers towards the client are full
        // (about 256 messages): then it neither reads its destination nor resends (§16.3).
        let link_full = to_client.len() >= LINK_BUFFER;
        if target_up
            && !link_full
            && down_pos < download.len()
            && agent.can_read_target()
            && read_due(now, next_read)
        {
            let n = (download.len() - down_pos).min(1024);
            agent.handle_target_data(now, download.slice(down_pos..down_pos + n));
            down_pos += n;
            next_read = now + Duration::from_millis(1);
        }
        while let Some(f) = agent.poll_transmit() {
            // While the client is away the service queues the agent's frames (as MGS and
            // realagent's relay do) and delivers them on the next connection.
            let at = link_up_at.unwrap_or(now);
            for (d, m) in down.apply(f) {
                tie += 1;
                to_client.push(Reverse((at + latency + d, tie, m)));
            }
        }
        let done = report.received_by_target.len() == upload.len()
            && report.received_by_client.len() == download.len()
            && client.all_acked();
        if done || report.ended.is_some() || now - t0 > cfg.time_limit {
            break;
        }
        // Advance to the next thing that happens.
        let reading = target_up
            && to_client.len() < LINK_BUFFER
            && down_pos < download.len()
            && agent.can_read_target();
        let work_now =
            (ready && up_pos < upload.len() && client.can_accept_input() && link_up_at.is_none())
                || (reading && read_due(now, next_read))
                || (client.pending_output() > 0 && cfg.reader_bytes_per_ms.is_none());
        // A side that does not take frames leaves them queued on the link (backpressure).
        let mut next = [
            to_agent
                .peek()
                .filter(|_| agent.can_take_frames())
                .map(|r| r.0.0),
            to_client.peek().filter(|_| takes(&client)).map(|r| r.0.0),
            reading.then_some(next_read),
            client.poll_timeout(),
            agent
                .poll_timeout()
                .filter(|_| to_client.len() < LINK_BUFFER),
            link_up_at,
            next_cut,
            cfg.reader_bytes_per_ms
                .filter(|_| client.pending_output() > 0)
                .map(|_| now + Duration::from_millis(1)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_millis(1));
        if work_now {
            next = now;
        }
        let next = next.max(now);
        if let Some(rate) = cfg.reader_bytes_per_ms {
            let ms = (next - now).as_millis().max(u128::from(next > now)) as usize;
            drain_credit = drain_credit.saturating_add(rate * ms);
        }
        if let Some(rate) = cfg.target_bytes_per_ms {
            let ms = (next - now).as_millis().max(u128::from(next > now)) as usize;
            let n = target_unwritten.min(rate.saturating_mul(ms));
            target_unwritten -= n;
            agent.handle_target_written(n);
        }
        now = next;
        if next_cut.is_some_and(|t| now >= t) {
            // What was in flight on the old connection is lost.
            to_agent.clear();
            to_client.clear();
            link_up_at = Some(now + cfg.outage);
            next_cut = cfg.disconnect_every.map(|d| now + cfg.outage + d);
        }
        if link_up_at.is_some_and(|t| now >= t) {
            link_up_at = None;
            report.reconnects += 1;
            client.handle_reconnect(now);
            agent.handle_client_reconnect(now);
        }
        while agent.can_take_frames() && to_agent.peek().is_some_and(|r| r.0.0 <= now) {
            if let Some(Reverse((_, _, m))) = to_agent.pop() {
                agent.handle_frame(now, &m);
            }
        }
        while takes(&client) && to_client.peek().is_some_and(|r| r.0.0 <= now) {
            if let Some(Reverse((_, _, m))) = to_client.pop() {
                client.handle_frame(now, m);
            }
        }
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        if to_client.len() < LINK_BUFFER && agent.poll_timeout().is_some_and(|t| t <= now) {
            agent.handle_timeout(now);
        }
    }
    report.elapsed = now - t0;
    report.client_retransmissions = client.retransmissions();
    report.agent_retransmissions = agent.retransmissions();
    report.bad_frames = client.stats().bad_frames;
    report
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
