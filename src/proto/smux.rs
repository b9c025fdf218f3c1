//! smux v1 (github.com/xtaci/smux, as vendored by the plugin and the agent, §8.4) as a sans-IO
//! multiplexer over the data channel's byte stream: many TCP connections, one session.
//!
//! Frame: version u8 (1), cmd u8, length u16 LE, stream id u32 LE, then `length` bytes.
//! Commands: SYN 0 (open), FIN 1 (this side is done), PSH 2 (data), NOP 3 (keepalive, id 0).
//! Client-opened ids are odd and start at 3, like Go's client. v1 has no flow control: the
//! caller applies back-pressure by not feeding more bytes.

use std::collections::{HashMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// smux protocol version spoken by the agent.
pub const VERSION: u8 = 1;
/// Largest data frame (Go's `MaxFrameSize`).
pub const MAX_FRAME: usize = 32 * 1024;
const HEADER: usize = 8;

/// smux commands, in wire order.
#[allow(missing_docs)]
pub mod cmd {
    pub const SYN: u8 = 0;
    pub const FIN: u8 = 1;
    pub const PSH: u8 = 2;
    pub const NOP: u8 = 3;
}

/// Which end of the mux this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams (our forwarder, like the plugin).
    Client,
    /// Accepts streams (the agent).
    Server,
}

/// Something the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// The peer opened a stream (server role).
    Opened(u32),
    /// Data for a stream, in order.
    Data(u32, Bytes),
    /// The peer finished writing on this stream.
    Fin(u32),
}

/// A malformed byte stream: the session cannot continue.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MuxError {
    /// Not smux v1.
    #[error("smux version {0} is not supported")]
    Version(u8),
    /// Unknown command byte.
    #[error("unknown smux command {0}")]
    Command(u8),
}

#[derive(Debug, Default)]
struct Stream {
    fin_sent: bool,
    fin_received: bool,
}

/// One smux session.
#[derive(Debug)]
pub struct Mux {
    role: Role,
    next_id: u32,
    streams: HashMap<u32, Stream>,
    inbuf: BytesMut,
    out: VecDeque<Bytes>,
    events: VecDeque<MuxEvent>,
}

impl Mux {
    /// A mux with no streams.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            next_id: if role == Role::Client { 1 } else { 0 },
            streams: HashMap::new(),
            inbuf: BytesMut::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Opens a stream (SYN) and returns its id.
    pub fn open(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(2);
        let id = self.next_id;
        self.streams.insert(id, Stream::default());
        self.frame(cmd::SYN, id, &[]);
        id
    }

    /// Queues data on a stream, split into frames of at most [`MAX_FRAME`].
    pub fn send(&mut self, id: u32, data: &[u8]) {
        if self.streams.get(&id).is_none_or(|s| s.fin_sent) {
            return;
        }
        for chunk in data.chunks(MAX_FRAME) {
            self.frame(cmd::PSH, id, chunk);
        }
    }

    /// Ends our side of a stream (FIN). The stream is forgotten once both sides have.
    pub fn finish(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.fin_sent {
            s.fin_sent = true;
            self.frame(cmd::FIN, id, &[]);
        }
        self.forget_if_done(id);
    }

    /// Queues a keepalive NOP.
    pub fn keepalive(&mut self) {
        self.frame(cmd::NOP, 0, &[]);
    }

    /// Feeds bytes received from the peer (any split).
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<(), MuxError> {
        self.inbuf.extend_from_slice(data);
        while self.inbuf.len() >= HEADER {
            let (ver, command) = (self.inbuf[0], self.inbuf[1]);
            let len = usize::from(u16::from_le_bytes([self.inbuf[2], self.inbuf[3]]));
            let id =
                u32::from_le_bytes([self.inbuf[4], self.inbuf[5], self.inbuf[6], self.inbuf[7]]);
            if ver != VERSION {
                return Err(MuxError::Version(ver));
            }
            if command > cmd::NOP {
                return Err(MuxError::Command(command));
            }
            if self.inbuf.len() < HEADER + len {
                break;
            }
            self.inbuf.advance(HEADER);
            let body = self.inbuf.split_to(len).freeze();
            self.on_frame(command, id, body);
        }
        Ok(())
    }

    #[allow(clippy::collapsible_match)]
    fn on_frame(&mut self, command: u8, id: u32, body: Bytes) {
        match command {
            cmd::SYN => {
                if self.role == Role::Server && !self.streams.contains_key(&id) {
                    self.streams.insert(id, Stream::default());
                    self.events.push_back(MuxEvent::Opened(id));
                }
            }
            cmd::PSH => {
                if self.streams.get(&id).is_some_and(|s| !s.fin_received) && !body.is_empty() {
                    self.events.push_back(MuxEvent::Data(id, body));
                }
            }
            cmd::FIN => {
                if let Some(s) = self.streams.get_mut(&id)
                    && !s.fin_received
                {
                    s.fin_received = true;
                    self.events.push_back(MuxEvent::Fin(id));
                    self.forget_if_done(id);
                }
            }
            _ => {} // NOP
        }
    }

    fn forget_if_done(&mut self, id: u32) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.fin_sent && s.fin_received)
        {
            self.streams.remove(&id);
        }
    }

    fn frame(&mut self, command: u8, id: u32, body: &[u8]) {
        let mut f = BytesMut::with_capacity(HEADER + body.len());
        f.put_u8(VERSION);
        f.put_u8(command);
        f.put_u16_le(body.len() as u16);
        f.put_u32_le(id);
        f.put_slice(body);
        self.out.push_back(f.freeze());
    }

    /// Next bytes for the data channel.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    /// Streams not yet finished by both sides.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pump(from: &mut Mux, to: &mut Mux) {
        let bytes: Vec<u8> = std::iter::from_fn(|| from.poll_transmit())
            .flat_map(|b| b.to_vec())
            .collect();
        // Deliver in awkward pieces: frame boundaries must not matter.
        for piece in bytes.chunks(5) {
            to.handle_bytes(piece).unwrap();
        }
    }

    #[test]
    fn client_ids_are_odd_from_three_and_frames_match_go() {
        let mut c = Mux::new(Role::Client);
        assert_eq!((c.open(), c.open()), (3, 5));
        c.send(3, b"hi");
        let wire: Vec<u8> = std::iter::from_fn(|| c.poll_transmit())
            .flat_map(|b| b.to_vec())
            .collect();
        assert_eq!(
            wire,
            [
                [1, 0, 0, 0, 3, 0, 0, 0].as_slice(),
                &[1, 0, 0, 0, 5, 0, 0, 0],
                &[1, 2, 2, 0, 3, 0, 0, 0, b'h', b'i']
            ]
            .concat()
        );
    }

    #[test]
    fn streams_open_carry_data_and_close_from_both_sides() {
        let (mut c, mut s) = (Mux::new(Role::Client), Mux::new(Role::Server));
        let id = c.open();
        c.send(id, &vec![9u8; 70_000]);
        c.finish(id);
        pump(&mut c, &mut s);
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(events[0], MuxEvent::Opened(id));
        let data: usize = events
            .iter()
            .map(|e| {
                if let MuxEvent::Data(_, b) = e {
                    b.len()
                } else {
                    0
                }
            })
            .sum();
        assert_eq!(data, 70_000);
        assert_eq!(events.last(), Some(&MuxEvent::Fin(id)));
        s.finish(id);
        pump(&mut s, &mut c);
        assert_eq!(c.poll_event(), Some(MuxEvent::Fin(id)));
        assert_eq!((c.open_streams(), s.open_streams()), (0, 0));
    }

    #[test]
    fn rejects_other_versions() {
        let mut s = Mux::new(Role::Server);
        assert_eq!(
            s.handle_bytes(&[2, 0, 0, 0, 3, 0, 0, 0]),
            Err(MuxError::Version(2))
        );
    }
}
