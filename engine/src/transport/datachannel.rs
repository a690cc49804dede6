//! Data channels (RFC 8831) over the participant's DTLS transport: one SCTP association
//! (`rtc-sctp`, sans-IO) in the server role, and the Data Channel Establishment Protocol
//! (RFC 8832, `rtc-datachannel`'s message codec) for channels the client opens.
//!
//! The client opens channels (`createDataChannel`); we acknowledge each `DATA_CHANNEL_OPEN`
//! and then read and write messages on it with the reliability and ordering it asked for.
//! Limits, each refused and counted, never a panic: messages larger than
//! [`MAX_MESSAGE_BYTES`] (the `a=max-message-size` we announce), more than [`MAX_CHANNELS`]
//! channels, malformed SCTP or DCEP. Sending is refused with [`SendError::Backpressure`]
//! while more than [`MAX_BUFFERED_BYTES`] wait on a channel (a receiver that does not keep
//! up loses messages, never the node's memory).
//!
//! Inbound: SCTP packets come from DTLS application data ([`DataChannels::handle_packet`]);
//! outbound packets are polled with [`DataChannels::poll_transmit`] for DTLS to encrypt.

use std::collections::{HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc_datachannel::data_channel::DataChannel as DcepRules;
use rtc_datachannel::message::Message as Dcep;
use rtc_datachannel::message::message_channel_ack::DataChannelAck;
use rtc_sctp::{
    Association, AssociationHandle, DatagramEvent, Endpoint, EndpointConfig, Event,
    PayloadProtocolIdentifier as Ppi, ServerConfig, StreamEvent, TransportConfig,
};
use rtc_shared::marshal::{Marshal, Unmarshal};

/// Largest message either way (announced as `a=max-message-size`).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most channels one client may open.
pub const MAX_CHANNELS: usize = 16;
/// Bytes that may wait unsent on one channel before sends are refused.
pub const MAX_BUFFERED_BYTES: usize = 1024 * 1024;
/// The SCTP port both sides use (`a=sctp-port`).
pub const SCTP_PORT: u16 = 5000;
/// Longest channel label kept.
const MAX_LABEL: usize = 128;

/// The address the SCTP endpoint sees for our one peer (DTLS carries it; SCTP does not
/// route by it).
const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5000);

/// What happened on the data channels, drained with [`DataChannels::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEvent {
    /// The client opened a channel (acknowledged).
    Opened {
        id: u16,
        label: String,
        ordered: bool,
    },
    /// A complete message from the client.
    Message { id: u16, binary: bool, data: Bytes },
    /// A channel (or the whole association, for each of its channels) closed.
    Closed { id: u16 },
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no open data channel {0}")]
    NoChannel(u16),
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("the receiver is not keeping up ({0} bytes waiting)")]
    Backpressure(usize),
    #[error("SCTP: {0}")]
    Sctp(String),
}

/// What was refused or dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub malformed: u64,
    pub oversize: u64,
    pub too_many_channels: u64,
    pub unknown_channel: u64,
    pub messages_in: u64,
    pub messages_out: u64,
}

/// The data channels of one participant.
pub struct DataChannels {
    endpoint: Endpoint,
    association: Option<(AssociationHandle, Association)>,
    /// Open channels (stream ids); their labels travel up in [`ChannelEvent::Opened`].
    channels: HashSet<u16>,
    events: VecDeque<ChannelEvent>,
    transmits: VecDeque<Bytes>,
    stats: ChannelStats,
    closed: bool,
    /// Streams with data waiting (readable events are edge-triggered: kept until read).
    readable: Vec<u16>,
    /// Streams the peer created, live (at most [`MAX_STREAMS`]).
    accepted: Vec<u16>,
}

/// Stream ids a channel may use (`max_num_inbound_streams`).
const MAX_STREAM_ID: usize = MAX_CHANNELS * 4;
/// Live streams one peer may create (channels, and streams closing).
const MAX_STREAMS: usize = MAX_CHANNELS * 2;

fn new_endpoint() -> Endpoint {
    let transport = TransportConfig::default()
        .with_sctp_port(SCTP_PORT)
        .with_max_message_size(MAX_MESSAGE_BYTES as u32)
        .with_max_num_inbound_streams(MAX_STREAM_ID as u16)
        .with_max_num_outbound_streams(MAX_STREAM_ID as u16)
        .with_max_receive_buffer_size(256 * 1024);
    Endpoint::new(
        PEER,
        rtc_shared::TransportProtocol::UDP,
        Arc::new(EndpointConfig::new()),
        Some(Arc::new(ServerConfig::new(transport))),
    )
}

impl Default for DataChannels {
    fn default() -> Self {
        Self::new()
    }
}

impl DataChannels {
    pub fn new() -> Self {
        Self {
            endpoint: new_endpoint(),
            readable: Vec::new(),
            accepted: Vec::new(),
            association: None,
            channels: HashSet::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: ChannelStats::default(),
            closed: false,
        }
    }

    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// True once the SCTP association is up.
    pub fn is_connected(&self) -> bool {
        self.association
            .as_ref()
            .is_some_and(|(_, a)| !a.is_handshaking() && !a.is_closed())
    }

    /// True while an association exists or channels are open.
    pub fn in_use(&self) -> bool {
        self.association.is_some() || !self.channels.is_empty()
    }

    /// One SCTP packet from DTLS application data.
    pub fn handle_packet(&mut self, now: Instant, packet: BytesMut) {
        if self.closed {
            return;
        }
        let Some((handle, event)) = self.endpoint.handle(now, PEER, None, packet.freeze()) else {
            self.stats.malformed += 1;
            return;
        };
        match event {
            DatagramEvent::NewAssociation(association) => {
                // One association per transport (RFC 8831 §6.1): the endpoint takes no more.
                self.endpoint.reject_new_associations();
                self.association = Some((handle, association));
            }
            DatagramEvent::AssociationEvent(event) => match &mut self.association {
                Some((h, a)) if *h == handle => a.handle_event(event),
                _ => {
                    self.stats.malformed += 1;
                    return;
                }
            },
            _ => {}
        }
        self.process(now);
    }

    /// Sends one message on channel `id`.
    pub fn send(
        &mut self,
        now: Instant,
        id: u16,
        binary: bool,
        data: &Bytes,
    ) -> Result<(), SendError> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(SendError::TooLarge(data.len()));
        }
        if !self.channels.contains(&id) {
            return Err(SendError::NoChannel(id));
        }
        let Some((_, association)) = &mut self.association else {
            return Err(SendError::NoChannel(id));
        };
        let mut stream = association
            .stream(id)
            .map_err(|_| SendError::NoChannel(id))?;
        let waiting = stream.buffered_amount().unwrap_or(0);
        if waiting > MAX_BUFFERED_BYTES {
            return Err(SendError::Backpressure(waiting));
        }
        let (ppi, payload) = match (binary, data.is_empty()) {
            (true, false) => (Ppi::Binary, data.clone()),
            (false, false) => (Ppi::String, data.clone()),
            // SCTP cannot carry an empty payload: one zero byte with the "empty" PPI.
            (true, true) => (Ppi::BinaryEmpty, Bytes::from_static(&[0])),
            (false, true) => (Ppi::StringEmpty, Bytes::from_static(&[0])),
        };
        stream
            .write_chunk_with_ppi(now, &payload, ppi)
            .map_err(|e| SendError::Sctp(e.to_string()))?;
        self.stats.messages_out += 1;
        self.flush(now);
        Ok(())
    }

    /// The next SCTP packet for DTLS to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.association
            .as_ref()
            .and_then(|(_, a)| a.poll_timeout())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, a)) = &mut self.association {
            a.handle_timeout(now);
        }
        self.process(now);
    }

    /// Aborts the association (the transport is closing, or the data section was
    /// rejected); every channel closes.
    pub fn close(&mut self, now: Instant) {
        if let Some((_, a)) = &mut self.association {
            let _ = a.abort();
        }
        self.flush(now);
        for id in self.channels.iter().copied().collect::<Vec<_>>() {
            self.events.push_back(ChannelEvent::Closed { id });
        }
        self.channels.clear();
        self.closed = true;
    }

    /// Drains the association's events: opens, messages, closes; then its packets.
    fn process(&mut self, now: Instant) {
        let Some((handle, association)) = &mut self.association else {
            return;
        };
        let handle = *handle;
        let mut lost = false;
        while let Some(event) = association.poll() {
            match event {
                Event::Stream(StreamEvent::Readable { id }) if !self.readable.contains(&id) => {
                    self.readable.push(id);
                }
                // A stream reset by the peer (a closed channel) is reported as "lost" with
                // its stream id.
                Event::Stream(StreamEvent::Stopped { id, .. })
                | Event::Stream(StreamEvent::Finished { id })
                | Event::AssociationLost { id, .. } => {
                    self.readable.retain(|r| *r != id);
                    self.accepted.retain(|a| *a != id);
                    if self.channels.remove(&id) {
                        self.events.push_back(ChannelEvent::Closed { id });
                    }
                }
                Event::HandshakeFailed { .. } => lost = true,
                _ => {}
            }
        }
        // Streams the peer created (any stream id that carries data): at most
        // MAX_STREAMS live ones; a stream beyond that, or with an id no channel may have,
        // is reset at once (its channel closes) and its data is never read.
        let mut refused = Vec::new();
        while let Some(stream) = association.accept_stream() {
            let id = stream.stream_identifier();
            if usize::from(id) >= MAX_STREAM_ID || self.accepted.len() >= MAX_STREAMS {
                refused.push(id);
            } else if !self.accepted.contains(&id) {
                self.accepted.push(id);
            }
        }
        for id in refused {
            self.stats.too_many_channels += 1;
            self.readable.retain(|r| *r != id);
            if let Ok(mut stream) = association.stream(id) {
                let _ = stream.close(now);
            }
        }
        // (A server association is "closed" until the peer's COOKIE ECHO establishes it.)
        lost |= association.is_closed() && !association.is_handshaking();
        // Complete messages of the streams that have some (held back while the handshake
        // finishes: a DATA chunk can arrive with its last step).
        if !association.is_handshaking() {
            for id in std::mem::take(&mut self.readable) {
                while let Some(read) = self.read_message(id) {
                    match read {
                        Some((ppi, payload)) => self.on_message(now, id, ppi, payload),
                        None => self.stats.oversize += 1,
                    }
                }
            }
        }
        if lost {
            for id in self.channels.iter().copied().collect::<Vec<_>>() {
                self.events.push_back(ChannelEvent::Closed { id });
            }
            self.channels.clear();
        }
        let Some((_, association)) = &mut self.association else {
            return;
        };
        let mut drained = false;
        while let Some(event) = association.poll_endpoint_event() {
            self.endpoint.handle_event(handle, event);
            drained = true;
        }
        self.flush(now);
        if drained || lost {
            // Gone (an ABORT, a failed handshake): a new association may start afresh.
            self.association = None;
            self.readable.clear();
            self.accepted.clear();
            self.endpoint = new_endpoint();
        }
    }

    /// The next complete message on stream `id`: None when there is none (or the stream is
    /// closed), Some(None) for one over [`MAX_MESSAGE_BYTES`] (dropped).
    fn read_message(&mut self, id: u16) -> Option<Option<(Ppi, BytesMut)>> {
        let (_, association) = self.association.as_mut()?;
        let mut stream = association.stream(id).ok()?;
        let chunks = stream.read_sctp().ok()??;
        Some(
            chunks
                .to_payload(MAX_MESSAGE_BYTES)
                .ok()
                .map(|payload| (chunks.ppi, payload)),
        )
    }

    fn on_message(&mut self, now: Instant, id: u16, ppi: Ppi, payload: BytesMut) {
        match ppi {
            Ppi::Dcep => self.on_dcep(now, id, payload),
            Ppi::String | Ppi::Binary | Ppi::StringEmpty | Ppi::BinaryEmpty => {
                if !self.channels.contains(&id) {
                    // Data on a stream no DCEP open named: reset it (no channel there).
                    self.stats.unknown_channel += 1;
                    if let Some((_, association)) = &mut self.association
                        && let Ok(mut stream) = association.stream(id)
                    {
                        let _ = stream.close(now);
                    }
                    return;
                }
                let empty = matches!(ppi, Ppi::StringEmpty | Ppi::BinaryEmpty);
                self.stats.messages_in += 1;
                self.events.push_back(ChannelEvent::Message {
                    id,
                    binary: matches!(ppi, Ppi::Binary | Ppi::BinaryEmpty),
                    data: if empty {
                        Bytes::new()
                    } else {
                        payload.freeze()
                    },
                });
            }
            _ => self.stats.malformed += 1,
        }
    }

    fn on_dcep(&mut self, now: Instant, id: u16, payload: BytesMut) {
        // Only DATA_CHANNEL_OPEN (3) and ACK (2) are DCEP on the wire; the codec also knows
        // internal message types whose parsers trust the length.
        if !matches!(payload.first(), Some(2 | 3)) {
            self.stats.malformed += 1;
            return;
        }
        let mut buf = &payload[..];
        let Ok(message) = Dcep::unmarshal(&mut buf) else {
            self.stats.malformed += 1;
            return;
        };
        let Dcep::DataChannelOpen(open) = message else {
            // An ACK to an open of ours (we open none) or anything else: ignored.
            return;
        };
        if self.channels.contains(&id) {
            self.stats.malformed += 1;
            return;
        }
        let Some((_, association)) = &mut self.association else {
            return;
        };
        let Ok(mut stream) = association.stream(id) else {
            self.stats.malformed += 1;
            return;
        };
        if self.channels.len() >= MAX_CHANNELS {
            self.stats.too_many_channels += 1;
            // Reset the stream: the client's channel closes.
            let _ = stream.close(now);
            self.flush(now);
            return;
        }
        let (unordered, reliability) = DcepRules::get_reliability_params(open.channel_type);
        if stream
            .set_reliability_params(unordered, reliability, open.reliability_parameter)
            .is_err()
        {
            self.stats.malformed += 1;
            return;
        }
        let ack = match Dcep::DataChannelAck(DataChannelAck {}).marshal() {
            Ok(b) => b.freeze(),
            Err(_) => return,
        };
        if stream.write_chunk_with_ppi(now, &ack, Ppi::Dcep).is_err() {
            self.stats.malformed += 1;
            return;
        }
        let label: String = String::from_utf8_lossy(&open.label)
            .chars()
            .take(MAX_LABEL)
            .collect();
        self.channels.insert(id);
        self.events.push_back(ChannelEvent::Opened {
            id,
            label,
            ordered: !unordered,
        });
        self.flush(now);
    }

    fn flush(&mut self, now: Instant) {
        let Some((_, association)) = &mut self.association else {
            return;
        };
        while let Some(transmit) = association.poll_transmit(now) {
            if let rtc_sctp::Payload::RawEncode(packets) = transmit.message {
                self.transmits.extend(packets);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rtc_datachannel::message::message_channel_open::{ChannelType, DataChannelOpen};
    use rtc_sctp::ClientConfig;

    use super::*;

    /// A browser's side: an `rtc-sctp` client association, packets passed by hand.
    struct Client {
        endpoint: Endpoint,
        association: Association,
        received: Vec<(u16, Ppi, Bytes)>,
    }

    impl Client {
        fn new(now: Instant) -> Self {
            let mut endpoint = Endpoint::new(
                PEER,
                rtc_shared::TransportProtocol::UDP,
                Arc::new(EndpointConfig::new()),
                None,
            );
            let (_, association) = endpoint
                .connect(now, ClientConfig::new(TransportConfig::default()), PEER)
                .unwrap();
            Self {
                endpoint,
                association,
                received: Vec::new(),
            }
        }

        fn outgoing(&mut self, now: Instant) -> Vec<Bytes> {
            let mut out = Vec::new();
            while let Some(t) = self.association.poll_transmit(now) {
                if let rtc_sctp::Payload::RawEncode(p) = t.message {
                    out.extend(p);
                }
            }
            out
        }

        fn incoming(&mut self, now: Instant, packet: Bytes) {
            if let Some((_, DatagramEvent::AssociationEvent(e))) =
                self.endpoint.handle(now, PEER, None, packet)
            {
                self.association.handle_event(e);
            }
            while self.association.poll().is_some() {}
            for id in self.association.stream_ids() {
                let mut stream = self.association.stream(id).unwrap();
                while let Ok(Some(chunks)) = stream.read_sctp() {
                    let p = chunks.to_payload(1 << 20).unwrap().freeze();
                    self.received.push((id, chunks.ppi, p));
                }
            }
        }

        fn open(&mut self, now: Instant, id: u16, label: &str, kind: ChannelType) {
            let open = Dcep::DataChannelOpen(DataChannelOpen {
                channel_type: kind,
                priority: 256,
                reliability_parameter: 0,
                label: label.as_bytes().to_vec(),
                protocol: Vec::new(),
            })
            .marshal()
            .unwrap()
            .freeze();
            let mut stream = self.association.open_stream(id, Ppi::Dcep).unwrap();
            stream.write_chunk_with_ppi(now, &open, Ppi::Dcep).unwrap();
        }

        fn send(&mut self, now: Instant, id: u16, ppi: Ppi, data: &[u8]) {
            let mut stream = self.association.stream(id).unwrap();
            stream
                .write_chunk_with_ppi(now, &Bytes::copy_from_slice(data), ppi)
                .unwrap();
        }
    }

    /// Moves packets both ways until neither side has anything to send.
    fn pump(now: Instant, client: &mut Client, server: &mut DataChannels) {
        for _ in 0..64 {
            let to_server = client.outgoing(now);
            let mut to_client = Vec::new();
            for p in to_server.iter().cloned() {
                server.handle_packet(now, BytesMut::from(&p[..]));
            }
            server.handle_timeout(now);
            while let Some(p) = server.poll_transmit() {
                to_client.push(p);
            }
            if to_server.is_empty() && to_client.is_empty() {
                return;
            }
            for p in to_client {
                client.incoming(now, p);
            }
        }
        panic!("the exchange never settled");
    }

    fn events(server: &mut DataChannels) -> Vec<ChannelEvent> {
        std::iter::from_fn(|| server.poll_event()).collect()
    }

    #[test]
    fn a_client_opens_channels_and_messages_go_both_ways() {
        let now = Instant::now();
        let mut server = DataChannels::new();
        let mut client = Client::new(now);
        pump(now, &mut client, &mut server);
        assert!(server.is_connected());

        client.open(now, 1, "chat", ChannelType::Reliable);
        client.open(now, 3, "lossy", ChannelType::PartialReliableRexmitUnordered);
        pump(now, &mut client, &mut server);
        let opened = events(&mut server);
        assert!(opened.contains(&ChannelEvent::Opened {
            id: 1,
            label: "chat".into(),
            ordered: true
        }));
        assert!(opened.contains(&ChannelEvent::Opened {
            id: 3,
            label: "lossy".into(),
            ordered: false
        }));
        // Each open was acknowledged (DCEP ACK is message type 2).
        let acks: Vec<u16> = client
            .received
            .iter()
            .filter(|(_, ppi, p)| *ppi == Ppi::Dcep && p[..] == [2])
            .map(|(id, ..)| *id)
            .collect();
        assert_eq!(acks.len(), 2, "{:?}", client.received);

        client.send(now, 1, Ppi::String, b"hello");
        client.send(now, 3, Ppi::Binary, &[1, 2, 3]);
        client.send(now, 1, Ppi::StringEmpty, &[0]);
        pump(now, &mut client, &mut server);
        let got = events(&mut server);
        assert!(got.contains(&ChannelEvent::Message {
            id: 1,
            binary: false,
            data: Bytes::from_static(b"hello")
        }));
        assert!(got.contains(&ChannelEvent::Message {
            id: 3,
            binary: true,
            data: Bytes::from_static(&[1, 2, 3])
        }));
        assert!(got.contains(&ChannelEvent::Message {
            id: 1,
            binary: false,
            data: Bytes::new()
        }));

        client.received.clear();
        server
            .send(now, 1, false, &Bytes::from_static(b"back"))
            .unwrap();
        server.send(now, 3, true, &Bytes::new()).unwrap();
        pump(now, &mut client, &mut server);
        assert!(
            client
                .received
                .iter()
                .any(|(id, ppi, p)| *id == 1 && *ppi == Ppi::String && &p[..] == b"back")
        );
        assert!(
            client
                .received
                .iter()
                .any(|(id, ppi, _)| *id == 3 && *ppi == Ppi::BinaryEmpty)
        );
        assert_eq!(
            server.send(now, 9, false, &Bytes::from_static(b"x")),
            Err(SendError::NoChannel(9))
        );
        let big = Bytes::from(vec![0u8; MAX_MESSAGE_BYTES + 1]);
        assert_eq!(
            server.send(now, 1, true, &big),
            Err(SendError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }

    #[test]
    fn limits_refuse_extra_channels_and_garbage_and_a_slow_receiver_is_refused() {
        let now = Instant::now();
        let mut server = DataChannels::new();
        let mut client = Client::new(now);
        pump(now, &mut client, &mut server);
        for i in 0..(MAX_CHANNELS as u16 + 3) {
            client.open(now, i * 2 + 1, &format!("c{i}"), ChannelType::Reliable);
        }
        pump(now, &mut client, &mut server);
        let opened: Vec<u16> = events(&mut server)
            .into_iter()
            .filter_map(|e| match e {
                ChannelEvent::Opened { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(opened.len(), MAX_CHANNELS);
        let open = opened[0];
        assert_eq!(server.stats().too_many_channels, 3);

        // Garbage as SCTP, a message on a stream no DCEP opened, data on a stream id no
        // channel may use, and a DCEP message that is not an open: counted, nothing else.
        server.handle_packet(now, BytesMut::from(&b"not sctp at all"[..]));
        assert_eq!(server.stats().malformed, 1);
        let mut s = client.association.open_stream(40, Ppi::String).unwrap();
        s.write_chunk_with_ppi(now, &Bytes::from_static(b"sneaky"), Ppi::String)
            .unwrap();
        let mut s = client.association.open_stream(200, Ppi::String).unwrap();
        s.write_chunk_with_ppi(now, &Bytes::from_static(b"far"), Ppi::String)
            .unwrap();
        let mut s = client.association.open_stream(42, Ppi::Dcep).unwrap();
        s.write_chunk_with_ppi(now, &Bytes::from_static(&[0]), Ppi::Dcep)
            .unwrap();
        pump(now, &mut client, &mut server);
        assert_eq!(server.stats().unknown_channel, 1);
        assert_eq!(server.stats().malformed, 2, "{:?}", server.stats());
        assert!(
            server.stats().too_many_channels >= 3,
            "{:?}",
            server.stats()
        );
        assert!(events(&mut server).is_empty());

        // A client that stops acknowledging: sends are refused once a megabyte waits.
        let chunk = Bytes::from(vec![7u8; 60 * 1024]);
        let mut refused = None;
        for n in 0..100 {
            match server.send(now, open, true, &chunk) {
                Ok(()) => {}
                Err(e) => {
                    refused = Some((n, e));
                    break;
                }
            }
            while server.poll_transmit().is_some() {}
        }
        let (n, e) = refused.expect("back-pressure");
        assert!(matches!(e, SendError::Backpressure(_)), "{e}");
        assert!(n >= MAX_BUFFERED_BYTES / chunk.len(), "refused after {n}");
        // Time passes; nothing breaks (retransmission timers run).
        server.handle_timeout(now + Duration::from_secs(5));
    }

    /// One association at a time: a second INIT is refused; after an ABORT the channels
    /// close and a new association may start.
    #[test]
    fn an_aborted_association_closes_its_channels_and_a_new_one_may_start() {
        let now = Instant::now();
        let mut server = DataChannels::new();
        let mut client = Client::new(now);
        pump(now, &mut client, &mut server);
        client.open(now, 1, "chat", ChannelType::Reliable);
        pump(now, &mut client, &mut server);
        assert_eq!(events(&mut server).len(), 1);

        let mut intruder = Client::new(now);
        for p in intruder.outgoing(now) {
            server.handle_packet(now, BytesMut::from(&p[..]));
        }
        assert!(
            server.poll_transmit().is_none(),
            "no INIT ACK for a second association"
        );

        client.association.abort().unwrap();
        pump(now, &mut client, &mut server);
        assert_eq!(events(&mut server), vec![ChannelEvent::Closed { id: 1 }]);
        assert!(!server.is_connected());

        let mut again = Client::new(now);
        pump(now, &mut again, &mut server);
        assert!(server.is_connected());
        again.open(now, 1, "chat", ChannelType::Reliable);
        pump(now, &mut again, &mut server);
        assert!(matches!(
            events(&mut server).as_slice(),
            [ChannelEvent::Opened { id: 1, .. }]
        ));
    }
}
