//! DTLS 1.2 (RFC 6347) for DTLS-SRTP (RFC 5764), on `rtc-dtls`'s sans-IO endpoint.
//!
//! * One [`DtlsIdentity`] per node: the certificate, its SHA-256 fingerprint for SDP, and one
//!   handshake configuration shared by every participant (client certificate required,
//!   extended master secret required, SRTP profiles AES-128-GCM first, AES-CM-HMAC-SHA1-80
//!   as fallback).
//! * The remote certificate is checked against the fingerprint from the remote SDP after the
//!   handshake, not inside it: a browser answering our offer starts its handshake at the same
//!   moment its answer leaves on the signaling channel, so the fingerprint may arrive second.
//!   SRTP keys are released only once both the handshake and the check are done.
//! * The endpoint keys associations by remote address; ours is always one fixed pseudo
//!   address, so a client that moves to another network path (ICE re-nomination) keeps its
//!   DTLS session. The caller sends our records to the selected ICE path.
//! * A `close_notify` from the peer ends the transport at once.
//! * The server prefers the server role (it answers `passive` and browsers answer our
//!   offers `active`), but takes the client role when the answer to its offer says
//!   `passive` (webrtc-rs clients do, towards an ICE-lite offerer): [`DtlsServer::start_client`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_srtp::protection_profile::ProtectionProfile;
use sha2::{Digest, Sha256};

/// Errors building the node's DTLS identity.
#[derive(Debug, thiserror::Error)]
#[error("DTLS setup: {0}")]
pub struct DtlsSetupError(String);

/// The node's DTLS certificate and handshake configuration, shared by every participant.
#[derive(Clone)]
pub struct DtlsIdentity {
    config: Arc<HandshakeConfig>,
    client_config: Arc<HandshakeConfig>,
    fingerprint: String,
    crypto: Arc<dyn rtc_crypto::RTCCryptoProvider>,
}

impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl DtlsIdentity {
    /// A fresh self-signed ECDSA P-256 certificate and the server configuration around it.
    pub fn generate() -> Result<Self, DtlsSetupError> {
        let err = |e: &dyn std::fmt::Display| DtlsSetupError(e.to_string());
        let crypto = rtc_crypto::default_provider().map_err(|e| err(&e))?;
        let cert = rtc_dtls::crypto::Certificate::generate_self_signed(
            vec!["hearth".to_owned()],
            crypto.crypto(),
        )
        .map_err(|e| err(&e))?;
        let der = cert
            .certificate
            .first()
            .ok_or_else(|| DtlsSetupError("generated certificate is empty".into()))?;
        let fingerprint = fingerprint_of(der.as_ref());
        let build = |is_client: bool| {
            ConfigBuilder::default()
                .with_crypto_provider(Arc::clone(&crypto))
                .with_certificates(vec![cert.clone()])
                .with_srtp_protection_profiles(vec![
                    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                ])
                .with_client_auth(ClientAuthType::RequireAnyClientCert)
                // The peer's self-signed certificate is checked against its SDP fingerprint.
                .with_insecure_skip_verify(true)
                .with_extended_master_secret(ExtendedMasterSecretType::Require)
                .with_replay_protection_window(64)
                .with_server_name("hearth".into())
                .build(is_client, None)
                .map_err(|e| err(&e))
        };
        let config = build(false)?;
        let client_config = build(true)?;
        Ok(Self {
            config: Arc::new(config),
            client_config: Arc::new(client_config),
            fingerprint,
            crypto,
        })
    }

    /// `sha-256` fingerprint for SDP: upper-case hex pairs joined by colons.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// SHA-256 fingerprint of a DER certificate, as SDP writes it.
pub fn fingerprint_of(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut s = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Keys for one SRTP session, exported from the handshake.
#[derive(Clone)]
pub struct SrtpKeys {
    pub profile: ProtectionProfile,
    pub local_key: Vec<u8>,
    pub local_salt: Vec<u8>,
    pub remote_key: Vec<u8>,
    pub remote_salt: Vec<u8>,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// What happened on the DTLS association.
#[derive(Debug)]
pub enum DtlsEvent {
    /// Handshake done and the remote certificate matched its fingerprint.
    Connected(SrtpKeys),
    /// The peer sent `close_notify`.
    Closed,
    /// The handshake failed, timed out, or the certificate did not match.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshaking,
    /// Handshake complete; waiting for the remote fingerprint.
    Unverified,
    Connected,
    Done,
}

/// The fixed address the endpoint sees for our one peer.
const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9);

/// One participant's DTLS server.
pub struct DtlsServer {
    endpoint: Endpoint,
    client_config: Arc<HandshakeConfig>,
    /// Client role chosen but not started (waits for a selected ICE path).
    client_pending: bool,
    client_started: bool,
    phase: Phase,
    remote_fingerprints: Vec<String>,
    crypto: Arc<dyn rtc_crypto::RTCCryptoProvider>,
    events: Vec<DtlsEvent>,
    /// Application data (SCTP packets) received once connected and verified.
    app_data: std::collections::VecDeque<BytesMut>,
    /// Records that failed to parse or authenticate.
    rejected: u64,
}

impl DtlsServer {
    pub fn new(identity: &DtlsIdentity) -> Self {
        Self {
            endpoint: Endpoint::new(
                PEER,
                rtc_shared::TransportProtocol::UDP,
                Some(Arc::clone(&identity.config)),
            ),
            client_config: Arc::clone(&identity.client_config),
            client_pending: false,
            client_started: false,
            phase: Phase::Handshaking,
            remote_fingerprints: Vec::new(),
            crypto: Arc::clone(&identity.crypto),
            events: Vec::new(),
            app_data: std::collections::VecDeque::new(),
            rejected: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// DTLS records refused (malformed, unauthenticated, or out of place).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The remote chose to be the DTLS server: we connect as the client once a path is
    /// selected ([`Self::start_client`]). Only before any handshake began.
    pub fn use_client_role(&mut self) {
        if self.phase == Phase::Handshaking && !self.client_started {
            self.endpoint.set_server_config(None);
            self.client_pending = true;
        }
    }

    /// True while the client role waits to send its ClientHello.
    pub fn wants_to_start(&self) -> bool {
        self.client_pending && !self.client_started
    }

    /// Sends our ClientHello (client role, once ICE selected a path).
    pub fn start_client(&mut self, now: Instant) {
        if !self.wants_to_start() {
            return;
        }
        self.client_started = true;
        if let Err(e) = self
            .endpoint
            .connect(now, PEER, Arc::clone(&self.client_config), None)
        {
            self.fail(format!("DTLS connect: {e}"));
        }
    }

    /// The `sha-256` fingerprints of the remote SDP (any case, with colons).
    pub fn set_remote_fingerprints(&mut self, fingerprints: Vec<String>) {
        self.remote_fingerprints = fingerprints;
        if self.phase == Phase::Unverified {
            self.verify();
        }
    }

    /// Feeds one DTLS record datagram (already checked to come from a validated path).
    pub fn handle_datagram(&mut self, now: Instant, data: BytesMut) {
        if self.phase == Phase::Done {
            return;
        }
        match self.endpoint.read(now, PEER, None, data) {
            Ok(events) => {
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => {
                            self.phase = Phase::Unverified;
                            if !self.remote_fingerprints.is_empty() {
                                self.verify();
                            }
                        }
                        EndpointEvent::PeerClosed => {
                            self.phase = Phase::Done;
                            self.events.push(DtlsEvent::Closed);
                        }
                        // Data channel packets: only from a verified peer, and a bounded
                        // backlog (the caller drains it after every record).
                        EndpointEvent::ApplicationData(data) => {
                            if self.phase == Phase::Connected && self.app_data.len() < 64 {
                                self.app_data.push_back(data);
                            } else {
                                self.rejected += 1;
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(_) => self.rejected += 1,
        }
    }

    fn verify(&mut self) {
        let Some(state) = self.endpoint.get_connection_state(PEER) else {
            self.fail("association vanished before verification".into());
            return;
        };
        let Some(cert) = state.peer_certificates.first() else {
            self.fail("the peer sent no certificate".into());
            return;
        };
        let actual = fingerprint_of(cert);
        if !self
            .remote_fingerprints
            .iter()
            .any(|fp| fp.eq_ignore_ascii_case(&actual))
        {
            self.fail("the peer's certificate does not match its SDP fingerprint".into());
            return;
        }
        match export_keys(state) {
            Ok(keys) => {
                self.phase = Phase::Connected;
                self.events.push(DtlsEvent::Connected(keys));
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, why: String) {
        self.phase = Phase::Done;
        self.events.push(DtlsEvent::Failed(why));
    }

    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The next application data (an SCTP packet) received.
    pub fn poll_app_data(&mut self) -> Option<BytesMut> {
        self.app_data.pop_front()
    }

    /// Encrypts application data (an SCTP packet) into a record for [`Self::poll_transmit`].
    pub fn send_app_data(&mut self, now: Instant, data: &[u8]) -> bool {
        self.phase == Phase::Connected && self.endpoint.write(now, PEER, data).is_ok()
    }

    /// The next record to send (to the selected ICE path).
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        self.endpoint.poll_transmit().map(|m| m.message)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase != Phase::Handshaking {
            return;
        }
        if self.endpoint.handle_timeout(PEER, now).is_err()
            && self.endpoint.get_connection_state(PEER).is_some()
        {
            self.fail("DTLS handshake timed out".into());
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Handshaking {
            self.endpoint.poll_timeout(&PEER)
        } else {
            None
        }
    }

    /// Sends `close_notify` (queued for [`Self::poll_transmit`]).
    pub fn close(&mut self, now: Instant) {
        let _ = self.endpoint.stop(now, PEER);
        self.phase = Phase::Done;
    }

    pub(crate) fn crypto(&self) -> &dyn rtc_crypto::RTCCrypto {
        self.crypto.crypto()
    }
}

fn export_keys(state: &rtc_dtls::state::State) -> Result<SrtpKeys, String> {
    let profile = match state.srtp_protection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => ProtectionProfile::AeadAes256Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            ProtectionProfile::Aes128CmHmacSha1_80
        }
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => {
            ProtectionProfile::Aes128CmHmacSha1_32
        }
        _ => return Err("no SRTP protection profile was negotiated".into()),
    };
    let mut config = rtc_srtp::config::Config {
        profile,
        ..Default::default()
    };
    let material = state
        .export_keying_material(
            rtc_srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
            &[],
            config.keying_material_len(),
        )
        .map_err(|e| e.to_string())?;
    config
        .set_session_keys_from_keying_material(material.as_ref(), state.is_client())
        .map_err(|e| e.to_string())?;
    let keys = config.keys;
    Ok(SrtpKeys {
        profile,
        local_key: keys.local_master_key,
        local_salt: keys.local_master_salt,
        remote_key: keys.remote_master_key,
        remote_salt: keys.remote_master_salt,
    })
}
