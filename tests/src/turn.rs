//! A small TURN client over UDP or TCP, for tests that need to say exactly what goes on the
//! wire (bad credentials, stale nonces, forbidden peers, quotas). Interop with a client we
//! did not write is covered by coturn's own `turnutils_*` tools in `tests/turn.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use hearth_engine::stun::{self, ChannelData, Class, Message, MessageBuilder, attr, method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A response, owned.
#[derive(Clone, Debug)]
pub struct Response {
    pub bytes: Vec<u8>,
}

impl Response {
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("the server sent a valid STUN message")
    }

    /// The error code, or None for a success.
    pub fn code(&self) -> Option<u16> {
        self.msg().error_code().map(|(c, _)| c)
    }
}

enum Wire {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

/// One TURN client (one 5-tuple).
pub struct TurnClient {
    wire: Wire,
    server: SocketAddr,
    pub username: String,
    password: String,
    realm: String,
    nonce: String,
    tid: u32,
}

impl TurnClient {
    pub async fn udp(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        socket.connect(server).await.expect("connect");
        Self::new(Wire::Udp(socket), server, username, password)
    }

    pub async fn tcp(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        let stream = TcpStream::connect(server).await.expect("connect");
        Self::new(Wire::Tcp(stream, Vec::new()), server, username, password)
    }

    fn new(wire: Wire, server: SocketAddr, username: &str, password: &str) -> TurnClient {
        TurnClient {
            wire,
            server,
            username: username.into(),
            password: password.into(),
            realm: String::new(),
            nonce: String::new(),
            tid: rand::random(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.wire {
            Wire::Udp(s) => s.local_addr().expect("local addr"),
            Wire::Tcp(s, _) => s.local_addr().expect("local addr"),
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn key(&self) -> [u8; 16] {
        stun::long_term_key(&self.username, &self.realm, &self.password)
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid = self.tid.wrapping_add(1);
        let mut tid = [0x42u8; 12];
        tid[8..].copy_from_slice(&self.tid.to_be_bytes());
        tid
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, data: &[u8]) {
        match &mut self.wire {
            Wire::Udp(s) => {
                s.send(data).await.expect("send");
            }
            Wire::Tcp(s, _) => {
                s.write_all(data).await.expect("send");
            }
        }
    }

    /// The next message from the server (STUN or ChannelData), or None after `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        match &mut self.wire {
            Wire::Udp(s) => {
                let mut buf = vec![0u8; 65_536];
                let n = tokio::time::timeout(wait, s.recv(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                buf.truncate(n);
                Some(buf)
            }
            Wire::Tcp(s, pending) => loop {
                if let Some(Ok(len)) = stun::frame_len(pending)
                    && pending.len() >= len
                {
                    let frame: Vec<u8> = pending.drain(..len).collect();
                    return Some(frame);
                }
                let mut buf = vec![0u8; 65_536];
                let n = tokio::time::timeout(wait, s.read(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    return None;
                }
                pending.extend_from_slice(&buf[..n]);
            },
        }
    }

    /// Sends a request built by `fill` and waits for its response (matching transaction
    /// id), without credentials.
    pub async fn request_plain(
        &mut self,
        m: u16,
        fill: impl Fn(MessageBuilder) -> MessageBuilder,
    ) -> Response {
        let tid = self.next_tid();
        let bytes = fill(MessageBuilder::new(m, Class::Request, tid)).build();
        self.exchange(tid, &bytes).await
    }

    /// Sends a signed request (long-term credentials), doing the 401/438 round trips.
    pub async fn request(
        &mut self,
        m: u16,
        fill: impl Fn(MessageBuilder) -> MessageBuilder,
    ) -> Response {
        for _ in 0..3 {
            let tid = self.next_tid();
            let b = fill(MessageBuilder::new(m, Class::Request, tid));
            let bytes = if self.nonce.is_empty() {
                b.build()
            } else {
                b.attr(attr::USERNAME, self.username.as_bytes())
                    .attr(attr::REALM, self.realm.as_bytes())
                    .attr(attr::NONCE, self.nonce.as_bytes())
                    .integrity(&self.key())
                    .fingerprint()
                    .build()
            };
            let response = self.exchange(tid, &bytes).await;
            let msg = response.msg();
            match msg.error_code().map(|(c, _)| c) {
                Some(401) if self.nonce.is_empty() => {}
                Some(438) => {}
                _ => return response,
            }
            self.realm = msg.text(attr::REALM).unwrap_or_default().to_owned();
            self.nonce = msg.text(attr::NONCE).unwrap_or_default().to_owned();
        }
        panic!("no way past the authentication round trips")
    }

    async fn exchange(&mut self, tid: [u8; 12], bytes: &[u8]) -> Response {
        for _attempt in 0..5 {
            self.send_raw(bytes).await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            while let Some(reply) = self
                .recv(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                if let Ok(msg) = Message::parse(&reply)
                    && msg.transaction_id() == tid
                {
                    return Response { bytes: reply };
                }
            }
        }
        panic!("no response from the TURN server at {}", self.server)
    }

    /// Allocate (UDP relay); the relayed address or the error code.
    pub async fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let r = self
            .request(method::ALLOCATE, |b| {
                b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
            })
            .await;
        match r.code() {
            None => Ok(r
                .msg()
                .xor_address(attr::XOR_RELAYED_ADDRESS)
                .expect("XOR-RELAYED-ADDRESS")),
            Some(code) => Err(code),
        }
    }

    pub async fn create_permission(&mut self, peer: SocketAddr) -> Option<u16> {
        self.request(method::CREATE_PERMISSION, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer)
        })
        .await
        .code()
    }

    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Option<u16> {
        self.request(method::CHANNEL_BIND, |b| {
            b.attr(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
        })
        .await
        .code()
    }

    pub async fn refresh(&mut self, lifetime: u32) -> Option<u16> {
        self.request(method::REFRESH, |b| b.u32_attr(attr::LIFETIME, lifetime))
            .await
            .code()
    }

    /// Sends `data` on a bound channel (padded over TCP).
    pub async fn send_channel(&mut self, channel: u16, data: &[u8]) {
        let mut frame = ChannelData::header(channel, data.len()).to_vec();
        frame.extend_from_slice(data);
        if matches!(self.wire, Wire::Tcp(..)) {
            while !frame.len().is_multiple_of(4) {
                frame.push(0);
            }
        }
        self.send_raw(&frame).await;
    }

    /// Sends `data` to `peer` in a Send indication.
    pub async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let tid = self.next_tid();
        let bytes = MessageBuilder::new(method::SEND, Class::Indication, tid)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data)
            .build();
        self.send_raw(&bytes).await;
    }

    /// Waits for relayed data from a peer: ChannelData or a Data indication.
    pub async fn recv_data(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.recv(left).await?;
            if let Some(cd) = ChannelData::parse(&frame) {
                return Some(cd.data.to_vec());
            }
            if let Ok(msg) = Message::parse(&frame)
                && msg.method() == method::DATA
                && msg.class() == Class::Indication
            {
                return msg.get(attr::DATA).map(<[u8]>::to_vec);
            }
        }
    }
}

/// A UDP echo peer on loopback: sends every datagram back to where it came from.
pub async fn echo_peer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (addr, task)
}
