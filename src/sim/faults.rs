//! Seeded, reproducible fault injection for one direction of a simulated link: loss,
//! duplication, reordering, digest corruption and delay with jitter. Used by the in-memory pair
//! and by the websocket gateway.

use std::time::Duration;

use bytes::Bytes;

use super::rng::Rng;

/// What can go wrong on one direction of the link. Rates are per message, in parts per million.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Drop every Nth message (0 = never).
    pub drop_every: u64,
    /// Random loss.
    pub loss_ppm: u32,
    /// Deliver a message twice.
    pub dup_ppm: u32,
    /// Hold a message back behind later ones.
    pub reorder_ppm: u32,
    /// Flip a payload byte so the digest no longer matches.
    pub corrupt_ppm: u32,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra random delay, uniform in [0, jitter].
    pub jitter: Duration,
    /// Drop exactly these messages (1-based positions in this direction), e.g. a handshake message.
    pub drop_at: Vec<u64>,
}

impl FaultPlan {
    /// Whether this plan changes anything at all.
    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }

    /// Parses `loss=0.01,dup=0.01,reorder=0.02,corrupt=0.001,drop-every=50,drop-at=1+3,delay=5ms,
    /// jitter=2ms`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut plan = Self::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or(format!("expected KEY=VALUE in {item:?}"))?;
            let rate = || -> Result<u32, String> {
                let r: f64 = value.parse().map_err(|_| format!("bad rate {value:?}"))?;
                if !(0.0..=1.0).contains(&r) {
                    return Err(format!("rate {r} not in 0..1"));
                }
                Ok((r * 1e6) as u32)
            };
            let millis = || -> Result<Duration, String> {
                let v = value.trim_end_matches("ms");
                Ok(Duration::from_millis(
                    v.parse().map_err(|_| format!("bad duration {value:?}"))?,
                ))
            };
            match key {
                "loss" => plan.loss_ppm = rate()?,
                "dup" => plan.dup_ppm = rate()?,
                "reorder" => plan.reorder_ppm = rate()?,
                "corrupt" => plan.corrupt_ppm = rate()?,
                "drop-every" => {
                    plan.drop_every = value.parse().map_err(|_| format!("bad count {value:?}"))?
                }
                "delay" => plan.delay = millis()?,
                "jitter" => plan.jitter = millis()?,
                "drop-at" => {
                    plan.drop_at = value
                        .split('+')
                        .map(|n| n.parse().map_err(|_| format!("bad position {n:?}")))
                        .collect::<Result<_, _>>()?;
                }
                other => return Err(format!("unknown fault {other:?}")),
            }
        }
        Ok(plan)
    }
}

/// Applies a [`FaultPlan`] to a sequence of messages.
#[derive(Debug, Clone)]
pub struct Faults {
    plan: FaultPlan,
    rng: Rng,
    count: u64,
    /// Messages dropped so far (loss or drop-every).
    pub dropped: u64,
}

impl Faults {
    /// A fault source with its own seed.
    pub fn new(plan: FaultPlan, seed: u64) -> Self {
        Self {
            plan,
            rng: Rng::new(seed),
            count: 0,
            dropped: 0,
        }
    }

    fn chance(&mut self, ppm: u32) -> bool {
        self.rng.chance(ppm)
    }

    /// What to deliver for one message, each copy with its extra delay. Empty = lost.
    pub fn apply(&mut self, msg: Bytes) -> Vec<(Duration, Bytes)> {
        self.count += 1;
        if (self.plan.drop_every > 0 && self.count.is_multiple_of(self.plan.drop_every))
            || self.plan.drop_at.contains(&self.count)
            || self.chance(self.plan.loss_ppm)
        {
            self.dropped += 1;
            return Vec::new();
        }
        let msg = if self.chance(self.plan.corrupt_ppm) && msg.len() > 120 {
            let mut m = msg.to_vec();
            let i = 120 + (self.rng.next_u64() as usize) % (m.len() - 120);
            m[i] ^= 0x5a;
            Bytes::from(m)
        } else {
            msg
        };
        let mut delay = self.plan.delay + self.jitter();
        if self.chance(self.plan.reorder_ppm) {
            delay += Duration::from_millis(5) + self.plan.delay + self.jitter();
        }
        let mut out = vec![(delay, msg.clone())];
        if self.chance(self.plan.dup_ppm) {
            out.push((delay + self.jitter() + Duration::from_millis(1), msg));
        }
        out
    }

    fn jitter(&mut self) -> Duration {
        let j = self.plan.jitter.as_micros() as u64;
        if j == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.next_u64() % (j + 1))
        }
    }
}

/// When the gateway kills the client's websocket (§10: the hourly close 1000 "Bye", network
/// drops). Counted per websocket; the agent side stays up, as with the real service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropPlan {
    /// Kill a websocket once this many bytes crossed it (both directions).
    pub after_bytes: Option<u64>,
    /// Kill a websocket once it has been open this long.
    pub after: Option<Duration>,
    /// Close with 1000 "Bye" instead of an abrupt TCP reset.
    pub clean: bool,
    /// Kill the first websocket right after the HandshakeRequest went out.
    pub in_handshake: bool,
    /// Stop after this many kills (unlimited when None).
    pub max: Option<u32>,
    /// Stop relaying (and answering pings) instead of closing: a dead network path.
    pub blackhole: bool,
    /// After a kill, refuse the client's new websockets for this long (a long network outage).
    pub outage: Option<Duration>,
}

impl DropPlan {
    /// Parses `after-bytes=8388608,after=5000ms,clean,handshake,max=3,blackhole,outage=10000ms`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut plan = Self::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let number = || {
                value
                    .trim_end_matches("ms")
                    .parse::<u64>()
                    .map_err(|_| format!("bad number {value:?}"))
            };
            match key {
                "after-bytes" => plan.after_bytes = Some(number()?),
                "after" => plan.after = Some(Duration::from_millis(number()?)),
                "clean" => plan.clean = true,
                "handshake" => plan.in_handshake = true,
                "blackhole" => plan.blackhole = true,
                "max" => plan.max = Some(number()? as u32),
                "outage" => plan.outage = Some(Duration::from_millis(number()?)),
                other => return Err(format!("unknown drop option {other:?}")),
            }
        }
        Ok(plan)
    }

    /// Whether the plan ever kills anything.
    pub fn is_active(&self) -> bool {
        self.after_bytes.is_some() || self.after.is_some() || self.in_handshake
    }
}

/// Bursts of `pause_publication` … `start_publication` sent to the client (§7), as the service
/// does when the agent is away or overloaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PausePlan {
    /// Time between the end of one pause and the start of the next.
    pub every: Option<Duration>,
    /// How long each pause lasts.
    pub length: Duration,
}

impl PausePlan {
    /// Parses `every=200ms,for=50ms`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut plan = Self::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or(format!("expected KEY=VALUE in {item:?}"))?;
            let ms: u64 = value
                .trim_end_matches("ms")
                .parse()
                .map_err(|_| format!("bad duration {value:?}"))?;
            match key {
                "every" => plan.every = Some(Duration::from_millis(ms)),
                "for" => plan.length = Duration::from_millis(ms),
                other => return Err(format!("unknown pause option {other:?}")),
            }
        }
        Ok(plan)
    }
}
