//! Incoming sequenced messages (§4.3): in-order delivery, a bounded reorder buffer, and the
//! duplicate decision. What to do with each arrival is the session's business; this only keeps
//! the numbers and the buffered frames.

use std::collections::BTreeMap;

use super::frame::Frame;

/// How an arriving sequence number relates to what we expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one: process it now.
    InOrder,
    /// Later than expected: buffer it if there is room.
    Ahead,
    /// Already processed: re-ack, never re-deliver.
    Duplicate,
}

/// The receive side of one direction.
#[derive(Debug)]
pub struct Inbox {
    expected: i64,
    buffered: BTreeMap<i64, Frame>,
    buffered_bytes: usize,
    capacity_bytes: usize,
}

impl Inbox {
    /// An inbox expecting sequence 0 that buffers at most `capacity_bytes` of payload.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            expected: 0,
            buffered: BTreeMap::new(),
            buffered_bytes: 0,
            capacity_bytes,
        }
    }

    /// Classifies an arrival.
    pub fn classify(&self, seq: i64) -> Arrival {
        match seq.cmp(&self.expected) {
            std::cmp::Ordering::Less => Arrival::Duplicate,
            std::cmp::Ordering::Equal => Arrival::InOrder,
            std::cmp::Ordering::Greater => Arrival::Ahead,
        }
    }

    /// Buffers an out-of-order frame. Returns false (drop it, do not ack) when full; a frame
    /// already buffered counts as stored.
    pub fn buffer(&mut self, frame: Frame) -> bool {
        if self.buffered.contains_key(&frame.sequence) {
            return true;
        }
        // Always leave room for at least one frame so progress is possible with a tiny capacity.
        if !self.buffered.is_empty()
            && self.buffered_bytes + frame.payload.len() > self.capacity_bytes
        {
            return false;
        }
        self.buffered_bytes += frame.payload.len();
        self.buffered.insert(frame.sequence, frame);
        true
    }

    /// Marks the expected message as processed.
    pub fn advance(&mut self) {
        self.expected += 1;
    }

    /// Takes the buffered frame that is now in order, if any.
    pub fn take_next(&mut self) -> Option<Frame> {
        let frame = self.buffered.remove(&self.expected)?;
        self.buffered_bytes -= frame.payload.len();
        Some(frame)
    }

    /// The next sequence number expected.
    pub fn expected(&self) -> i64 {
        self.expected
    }

    /// Payload bytes held out of order.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }
}
