// Hearth browser client.
//
// Signaling: one WebSocket at /v1/signal carrying proto3 JSON, one message per text frame
// (see proto/hearth/signal/v1/signal.proto). Fields holding default values are omitted by
// the server, so every read below falls back to the default (false, 0, "", []).
// Media: one RTCPeerConnection with perfect negotiation; this client is the polite peer.
// Everything lives in this closure; the only global is `window.hearth`.
(() => {
  'use strict';

  const RECONNECT_ATTEMPTS = 5, RECONNECT_BASE_MS = 500; // backoff 0.5 s, 1 s, 2 s, ...
  // A cluster node that does not host the meeting redirects the join to the one that does;
  // more redirects in a row than this mean the cluster is changing: start over after a backoff.
  const MAX_REDIRECTS = 3;
  const DEFAULT_PING_SECONDS = 10;
  const MEDIA = { audio: true, video: { width: 640, height: 360 } };
  // Fatal server errors after which joining again may succeed.
  const RETRYABLE_ERRORS = new Set(['TIMEOUT', 'NODE_UNAVAILABLE', 'INTERNAL']);
  const ACTIVE_STATES = ['joining', 'joined', 'reconnecting'];

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), title: $('meeting-title'), notice: $('notice'),
    joinView: $('join-view'), joinForm: $('join-form'), joinButton: $('join-button'),
    meetingInput: $('join-meeting'), nameInput: $('join-name'),
    tokenRow: $('token-row'), tokenInput: $('join-token'), tokenToggle: $('token-toggle'),
    meetingView: $('meeting-view'), grid: $('grid'), list: $('participant-list'),
    count: $('participant-count'), mediaNote: $('media-note'), chat: $('chat-list'),
    micButton: $('mic-button'), cameraButton: $('camera-button'), leaveButton: $('leave-button'),
    screenButton: $('screen-button'), captionsButton: $('captions-button'), statsButton: $('stats-button'),
    chatForm: $('chat-form'), chatInput: $('chat-input'),
  };

  // ---- State -------------------------------------------------------------------------

  let state = 'idle';          // idle | joining | joined | reconnecting | left | ended | error
  let lastError = null;        // last server error: { code, message }
  let activeSpeakers = [];     // participant ids, loudest first
  let session = null;          // what to (re)join: { meeting, name, token, devToken, userMeeting }
  let current = null;          // the live connection (see connect), or null
  let reconnectTimer = null, reconnectAttempts = 0;
  const reconnectLog = [];     // [{ reason, at }], the session restarts so far
  let selfId = '';             // our participant id while joined
  let localMedia = null;       // Promise<MediaStream|null>, kept across reconnects
  let localStream = null, micMuted = false, cameraMuted = false;
  // Our screen share: { stream, track, transceiver, conn, tile }, kept across reconnects.
  let screen = null, screenPending = false;
  const canShareScreen = Boolean(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
  const participants = new Map();  // participant id -> model (see upsertParticipant)
  const departed = new Set();      // ids that left: late tracks must not resurrect tiles
  const remoteTracks = new Map();  // MediaStreamTrack.id -> { participant, track, transceiver, stream }
  const screenTrackIds = new Set(); // server track ids published as screen shares
  // Live captions: the meeting's CaptionsState, and every segment received (latest text per
  // segment id, in arrival order, bounded), for the page and for window.hearth.captions().
  let captions = { enabled: false, language: '', engine: '', unavailable: '' };
  let wantCaptions = false;        // &captions=1: turn them on once joined
  let meetingStartedAt = 0;        // ms since the epoch (transcript times count from it)
  const CAPTIONS_KEEP = 500, CAPTION_LINES = 3, CAPTION_LINGER_MS = 8000;
  const captionSegments = new Map(); // segment id -> { participant, segmentId, text, final, start, end }

  // ---- Session lifecycle -------------------------------------------------------------

  function startSession({ meeting = '', name = '', token = '' }) {
    if (ACTIVE_STATES.includes(state)) return;
    session = { meeting, name, token, devToken: !token, userMeeting: meeting, redirects: 0, node: '' };
    reconnectAttempts = 0;
    lastError = null;
    showNotice('');
    setState('joining');
    connect();
  }

  // Gets a token, opens the socket and sends `join` once it is open. `url` is the hosting
  // node's signaling endpoint after a redirect; reconnects start over at this page's node.
  async function connect(url) {
    const sess = session;
    const token = await obtainToken(sess).catch((err) => { if (sess === session) tokenFailed(err); });
    if (token === undefined || sess !== session) return; // failed, or left meanwhile
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const conn = {
      ws: new WebSocket(url || `${scheme}//${location.host}/v1/signal`),
      pc: null, pingTimer: null, joined: false,
      inbox: Promise.resolve(),   // server messages are handled strictly in order
      chain: Promise.resolve(), wantOffer: false, pendingCandidates: [],
    };
    current = conn;
    // JoinRequest.meeting is optional; with a pasted token only send what the user typed.
    const meeting = (sess.devToken ? sess.meeting : sess.userMeeting) || undefined;
    conn.ws.onopen = () => send(conn, { join: compact({ token, meeting, dataChannels: true }) });
    conn.ws.onmessage = (ev) => onFrame(conn, ev.data);
    conn.ws.onclose = () => onSocketClosed(conn);
  }

  // Dev mode: GET /v1/dev/token (404 when the server is not in dev mode). Otherwise the
  // token the user gave is reused as is, also on reconnect.
  async function obtainToken(sess) {
    if (!sess.devToken) return sess.token;
    const query = new URLSearchParams({ meeting: sess.meeting, name: sess.name });
    const res = await fetch(`/v1/dev/token?${query}`, { cache: 'no-store' });
    if (res.status === 404) throw Object.assign(new Error('not in dev mode'), { devMode: false });
    if (!res.ok) throw new Error(`token request failed: HTTP ${res.status}`);
    const body = await res.json();
    if (body.meeting) sess.meeting = body.meeting;
    return body.token;
  }

  function tokenFailed(err) {
    if (err.devMode === false) {
      ui.tokenRow.hidden = false;
      lastError = { code: 'DEV_TOKEN_UNAVAILABLE', message: 'the server is not in dev mode' };
      endSession('error', 'This server is not in dev mode: paste an access token minted with `hearth token …`.');
    } else if (state === 'reconnecting') scheduleReconnect(err.message);
    else endSession('error', `Could not get a token: ${err.message}`);
  }

  // Handled after the messages received before it (a `meetingEnded` or fatal `error`
  // explains the close; then the connection is already dropped and this does nothing).
  function onSocketClosed(conn) {
    conn.inbox = conn.inbox.then(() => {
      if (conn !== current) return; // closed on purpose
      if (state === 'joined' || state === 'reconnecting') restart('connection lost');
      else endSession('error', 'Could not reach the signaling server.');
    });
  }

  // Drops the connection and joins again after a backoff, keeping camera and microphone.
  function restart(reason) { dropConnection(); scheduleReconnect(reason); }

  function scheduleReconnect(reason) {
    // Every restart of the session, with its reason (bounded): for window.hearth.reconnects.
    reconnectLog.push({ reason, at: Date.now() });
    if (reconnectLog.length > 50) reconnectLog.shift();
    if (reconnectAttempts >= RECONNECT_ATTEMPTS) {
      return endSession('error', `Connection lost and could not reconnect (${reason}).`);
    }
    const delay = RECONNECT_BASE_MS * 2 ** reconnectAttempts;
    reconnectAttempts += 1;
    setState('reconnecting');
    showNotice(`Reconnecting (${reason}), attempt ${reconnectAttempts} of ${RECONNECT_ATTEMPTS}…`);
    clearTimeout(reconnectTimer);
    if (session) session.redirects = 0;
    reconnectTimer = setTimeout(() => { reconnectTimer = null; connect(); }, delay);
  }

  function leave() {
    if (!session) return;
    if (current) send(current, { leave: {} }); // sent before the close frame
    endSession('left', 'You left the meeting.');
  }

  // Ends the session for good: final state, back to the join form.
  function endSession(finalState, message) {
    clearTimeout(reconnectTimer);
    reconnectTimer = session = null;
    dropConnection();
    stopLocalMedia();
    setState(finalState);
    showMeeting(false);
    showNotice(message, finalState === 'error' ? 'error' : 'info');
  }

  function dropConnection() {
    const conn = current;
    current = null;
    if (conn) {
      clearInterval(conn.pingTimer);
      conn.ws.onopen = conn.ws.onmessage = conn.ws.onclose = null;
      if (conn.ws.readyState <= WebSocket.OPEN) conn.ws.close(1000);
      if (conn.pc) conn.pc.close();
    }
    clearParticipants();
    selfId = '';
    setActiveSpeakers([]);
  }

  function send(conn, message) {
    if (conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify(message));
  }

  // ---- Server messages ---------------------------------------------------------------

  // Each frame is a ServerMessage: an object with exactly one key naming the message.
  function onFrame(conn, data) {
    let message = null;
    try { message = JSON.parse(data); } catch { /* reported below */ }
    if (!message || typeof message !== 'object') {
      console.warn('hearth: ignoring a frame that is not a JSON object');
      return;
    }
    const type = Object.keys(message)[0];
    const handler = Object.hasOwn(serverHandlers, type) && serverHandlers[type];
    if (!handler) return console.debug('hearth: ignoring unknown server message', type);
    conn.inbox = conn.inbox
      .then(() => (conn === current ? handler(conn, message[type] || {}) : undefined))
      .catch((err) => { if (conn === current) console.error(`hearth: handling "${type}" failed`, err); });
  }

  // One handler per ServerMessage field; `m` is the message with defaults omitted.
  const serverHandlers = {
    join: onJoined,
    offer: onServerOffer,
    answer: onServerAnswer,
    trickle: onServerCandidate,
    participantJoined: (conn, m) => upsertParticipant(m.participant || {}),
    participantLeft: onParticipantLeft,
    trackPublished: onTrackPublished,
    trackUnpublished: onTrackUnpublished,
    trackMuted: onTrackMuted,
    activeSpeakers: (conn, m) => setActiveSpeakers((m.speakers || []).map((s) => s.participantId)),
    meetingEnded: (conn, m) => endSession('ended', `The meeting ended${m.reason ? ` (${m.reason})` : ''}.`),
    error: onServerError,
    reconnect: (conn, m) => restart(m.reason || 'server asked to reconnect'),
    redirect: followRedirect,
    nodeDraining: (conn, m) => showNotice(
      `The server is going down for maintenance; this meeting ends within ${Math.ceil((m.deadlineSeconds || 0) / 60)} min.`),
    appMessage: onAppMessage,
    transcript: onTranscript,
    captions: (conn, m) => setCaptionsState(m),
    publishLayers: applyPublishLayers,
    pong: () => {},
  };

  // ---- Live captions -------------------------------------------------------------------

  function setCaptionsState(m) {
    captions = {
      enabled: Boolean(m.enabled), language: m.language || '', engine: m.engine || '',
      unavailable: m.unavailable || '',
    };
    if (captions.enabled && captions.unavailable) {
      showNotice(`Captions are on, but ${captions.unavailable}.`, 'warn');
    }
    renderControls();
  }

  function toggleCaptions(enabled = !captions.enabled) {
    if (current && current.joined) send(current, { setCaptions: { enabled } });
  }

  // A Transcript: interim text replaces the segment's line; the final one settles it (or
  // removes it when empty: nothing was understood) and fades after a while.
  function onTranscript(conn, m) {
    const segmentId = m.segmentId || '';
    if (!segmentId) return;
    const entry = {
      participant: m.participantId || '', segmentId, text: m.text || '', final: Boolean(m.final),
      start: Number(m.startMs || 0), end: Number(m.endMs || 0),
    };
    // When this page first saw the segment and its final (wall clock, ms), for latency.
    const seen = captionSegments.get(segmentId);
    entry.firstAt = seen ? seen.firstAt : Date.now();
    entry.finalAt = entry.final ? Date.now() : 0;
    captionSegments.delete(segmentId); // re-inserted last: arrival order
    captionSegments.set(segmentId, entry);
    while (captionSegments.size > CAPTIONS_KEEP) captionSegments.delete(captionSegments.keys().next().value);
    const p = participants.get(entry.participant);
    if (!p) return;
    const box = p.tile.captions;
    let line = box.querySelector(`[data-segment="${CSS.escape(segmentId)}"]`);
    if (!entry.text) { if (line) line.remove(); return; }
    if (!line) {
      line = el('div', 'caption-line');
      line.dataset.segment = segmentId;
      box.append(line);
      while (box.children.length > CAPTION_LINES) box.firstElementChild.remove();
    }
    line.textContent = entry.text;
    line.className = `caption-line ${entry.final ? 'final' : 'interim'}`;
    if (entry.final) setTimeout(() => line.remove(), CAPTION_LINGER_MS);
  }

  // A message from the app (REST/gRPC): appended to the chat panel, newest last, the
  // panel bounded to the last CHAT_KEEP messages.
  const CHAT_KEEP = 200;
  const messages = [];
  function onAppMessage(conn, m) {
    const at = m.sentAtMs ? new Date(Number(m.sentAtMs)) : new Date();
    showChat({ id: m.id || '', from: m.from || 'App', text: m.text || '', at });
  }

  // ---- Data channels -------------------------------------------------------------------
  // Two channels on the media connection: `chat` (reliable, ordered: the chat panel, and
  // the app's messages) and `lossy` (unordered, no retransmission: for app data where the
  // latest value matters). The server relays what we send to everyone's channel of the same
  // label, wrapped: text as JSON {from, identity, name, text}, binary as one length byte,
  // the sender's participant id, then the payload.
  const DATA_KEEP = 500;
  const dataReceived = [];
  // The join asks for data channels: the server's first offer carries their SCTP section
  // (our own offer never adds it: Chromium cannot offer it again after such an offer is
  // rolled back in glare). Once that is agreed, the channels open in-band.
  function maybeOpenDataChannels(conn) {
    const pc = conn.pc;
    if (conn.channels || !pc || !pc.sctp || pc.signalingState !== 'stable') return;
    openDataChannels(conn, pc);
  }

  function openDataChannels(conn, pc) {
    conn.channels = {
      chat: pc.createDataChannel('chat'),
      lossy: pc.createDataChannel('lossy', { ordered: false, maxRetransmits: 0 }),
    };
    for (const [label, channel] of Object.entries(conn.channels)) {
      channel.binaryType = 'arraybuffer';
      channel.onmessage = (ev) => onData(label, ev.data);
    }
  }

  function onData(label, data) {
    let entry;
    if (typeof data === 'string') {
      let m;
      try { m = JSON.parse(data); } catch { return console.warn('hearth: unreadable data message'); }
      entry = { label, from: m.from || '', identity: m.identity || '', name: m.name || '', text: m.text || '' };
      if (label === 'chat' && m.from) {
        showChat({ id: '', from: m.name || m.identity || 'someone', text: entry.text, at: new Date() });
      }
    } else {
      const bytes = new Uint8Array(data);
      const n = bytes[0] || 0;
      entry = {
        label, from: new TextDecoder().decode(bytes.subarray(1, 1 + n)), binary: true,
        bytes: [...bytes.subarray(1 + n)],
      };
    }
    dataReceived.push(entry);
    if (dataReceived.length > DATA_KEEP) dataReceived.shift();
  }

  // Sends on our channel `label`; false if it is not open.
  function sendData(label, data) {
    const channel = current && current.channels && current.channels[label];
    if (!channel || channel.readyState !== 'open') return false;
    channel.send(data);
    return true;
  }

  function onChatSubmit(ev) {
    ev.preventDefault();
    const text = ui.chatInput.value.trim();
    if (!text) return;
    if (!sendData('chat', text)) return showNotice('Messages are not connected yet', 'warn');
    showChat({ id: '', from: 'You', text, at: new Date() });
    ui.chatInput.value = '';
  }

  function showChat(entry) {
    const at = entry.at;
    messages.push(entry);
    if (messages.length > CHAT_KEEP) messages.shift();
    const time = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    const item = el('li', 'chat-item',
      el('span', 'chat-meta', `${entry.from} · ${time}`), el('span', 'chat-text', entry.text));
    item.dataset.messageId = entry.id;
    ui.chat.append(item);
    while (ui.chat.children.length > CHAT_KEEP) ui.chat.firstElementChild.remove();
    item.scrollIntoView({ block: 'nearest' });
  }

  // JoinResponse: our id, the others with their tracks, ICE servers, ping interval.
  // The meeting is hosted by another node: join there (same token, same join message).
  function followRedirect(conn, m) {
    const url = m.url || '';
    if (!/^wss?:\/\/[^/?#]+(\/[^?#]*)?\/v1\/signal$/.test(url)) return restart(`an invalid redirect (${url})`);
    if (session.redirects >= MAX_REDIRECTS) return restart('redirected too many times');
    session.redirects += 1;
    session.node = m.nodeId || '';
    if (location.protocol === 'https:' && url.startsWith('ws:')) return restart('a redirect to an unencrypted node');
    const keep = current;
    current = null;
    if (keep) {
      keep.ws.onopen = keep.ws.onmessage = keep.ws.onclose = null;
      if (keep.ws.readyState <= WebSocket.OPEN) keep.ws.close(1000);
    }
    connect(url);
  }

  function onJoined(conn, m) {
    conn.joined = true;
    session.redirects = 0;
    sentSettings.clear(); // a new session: tell it every tile
    reconnectAttempts = 0;
    selfId = m.participantId || '';
    meetingStartedAt = Number((m.meeting && m.meeting.startedAtMs) || 0);
    if (m.meeting && m.meeting.name) session.meeting = m.meeting.name;
    upsertParticipant({ name: session.name, ...(m.participant || {}), id: selfId }, true);
    for (const other of m.others || []) upsertParticipant(other);
    conn.pc = createPeerConnection(conn, m.iceServers || []);
    setCaptionsState(m.captions || {});
    if (wantCaptions && !captions.enabled) toggleCaptions(true);
    wantCaptions = false;
    const seconds = m.pingIntervalSeconds || DEFAULT_PING_SECONDS;
    conn.pingTimer = setInterval(() => send(conn, { ping: { timestamp: String(Date.now()) } }), seconds * 1000);
    setState('joined');
    showNotice('');
    showMeeting(true, session.meeting);
    publishLocalMedia(conn);
    publishScreen(conn);
  }

  function onParticipantLeft(conn, m) {
    if (m.participantId !== selfId) removeParticipant(m.participantId);
    else if (m.reason === 'meeting_ended') endSession('ended', 'The meeting ended.');
    else endSession('left', `You were removed from the meeting (${m.reason || 'removed'}).`);
  }

  function onTrackPublished(conn, m) {
    const track = normalizeTrack(m.track || {});
    const p = upsertParticipant({ id: m.participantId });
    if (!p) return;
    p.tracks.set(track.id, track);
    if (track.kind === 'VIDEO' && track.source !== 'SCREEN') p.videoWithdrawn = false;
    if (p.isSelf) syncOwnMute(conn, track);
    renderParticipant(p);
    reportTiles(p);
  }

  // The media stops now (hide it at once); the server's next offer removes the m-line.
  function onTrackUnpublished(conn, m) {
    const [p, track] = knownTrack(m);
    if (!track) return;
    p.tracks.delete(m.trackId);
    sentSettings.delete(m.trackId); // a track that comes back (same id) is told again
    if (track.kind === 'VIDEO' && track.source !== 'SCREEN' && !cameraTracks(p).length) p.videoWithdrawn = true;
    renderParticipant(p);
  }

  function onTrackMuted(conn, m) {
    const [p, track] = knownTrack(m);
    if (!track) return;
    track.muted = Boolean(m.muted);
    renderParticipant(p);
  }

  function knownTrack({ participantId, trackId }) {
    const p = participants.get(participantId);
    return [p, p && p.tracks.get(trackId)];
  }

  function onServerError(conn, m) {
    const code = m.code || 'ERROR_CODE_UNSPECIFIED';
    lastError = { code, message: m.message || '' };
    const text = `Server error ${code}${m.message ? `: ${m.message}` : ''}`;
    if (!m.fatal) showNotice(text, 'warn');
    else if (conn.joined && RETRYABLE_ERRORS.has(code)) restart(code);
    else endSession('error', text);
  }

  // ---- Peer connection and perfect negotiation ---------------------------------------

  function createPeerConnection(conn, iceServers) {
    // `?relay=1` sends all media through the node's TURN server (as a client behind a
    // UDP-blocking firewall would), for trying it out and for the tests.
    // `?turn=tcp` (or udp) keeps only the TURN URLs of that transport.
    const params = new URLSearchParams(location.search);
    const relayOnly = params.get('relay') === '1';
    const turnTransport = params.get('turn');
    const keepUrl = (u) => !turnTransport || !/^turns?:/.test(u) || u.endsWith(`transport=${turnTransport}`);
    const pc = new RTCPeerConnection({
      iceServers: iceServers.map((s) => compact({
        urls: (s.urls || []).filter(keepUrl),
        username: s.username || undefined, credential: s.credential || undefined,
      })),
      iceTransportPolicy: relayOnly ? 'relay' : 'all',
    });
    pc.onnegotiationneeded = () => negotiate(conn);
    pc.onicecandidate = ({ candidate: c }) => {
      if (!c || !c.candidate) return; // end-of-candidates is not sent
      const { candidate, sdpMid, sdpMLineIndex, usernameFragment } = c;
      send(conn, { trickle: compact({ candidate, sdpMid, sdpMLineIndex, usernameFragment }) });
    };
    pc.ontrack = onRemoteTrack;
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed' && conn === current) restart('media connection failed');
    };
    return pc;
  }

  // Negotiation runs as one serial queue per connection, so our offers and the server's
  // never interleave inside the browser. `wantOffer` records that we have changes to offer;
  // it is acted on whenever the connection is stable and nothing else is queued.
  function enqueue(conn, step) {
    conn.chain = conn.chain
      .then(() => (conn === current ? step() : undefined))
      .catch((err) => {
        if (conn.pc && conn.pc.signalingState !== 'closed') console.warn('hearth: negotiation step failed', err);
      })
      .then(() => maybeOffer(conn));
  }

  function negotiate(conn) {
    conn.wantOffer = true;
    enqueue(conn, () => undefined);
  }

  // Our offer: sent to the server, which answers it, or ignores it when offers cross.
  async function maybeOffer(conn) {
    const pc = conn.pc;
    if (conn !== current || !pc || !conn.wantOffer || pc.signalingState !== 'stable') return;
    conn.wantOffer = false;
    await pc.setLocalDescription();
    // Mids are assigned by setLocalDescription: declare what each sending m-line carries.
    send(conn, { offer: { type: 'offer', sdp: pc.localDescription.sdp, sources: declaredSources(pc) } });
  }

  // SessionDescription.sources: our sending transceivers' mids -> TrackSource.
  function declaredSources(pc) {
    const sources = {};
    for (const t of pc.getTransceivers()) {
      const track = t.sender.track;
      if (!t.mid || !track || !['sendonly', 'sendrecv'].includes(t.direction)) continue;
      if (screen && t === screen.transceiver) sources[t.mid] = 'SCREEN';
      else sources[t.mid] = track.kind === 'audio' ? 'MICROPHONE' : 'CAMERA';
    }
    return sources;
  }

  // Server offer. As the polite peer we always take it. If our own offer is outstanding,
  // the server ignored it (it only ignores offers that cross its own): roll ours back and
  // offer again once this exchange is done.
  function onServerOffer(conn, desc) {
    enqueue(conn, async () => {
      const pc = conn.pc;
      if (!pc) return;
      if (pc.signalingState === 'have-local-offer') {
        await pc.setLocalDescription({ type: 'rollback' });
        conn.wantOffer = true;
      }
      await pc.setRemoteDescription({ type: 'offer', sdp: desc.sdp || '' });
      await flushCandidates(conn);
      await pc.setLocalDescription();
      send(conn, { answer: { type: 'answer', sdp: pc.localDescription.sdp } });
      maybeOpenDataChannels(conn);
      participants.forEach(renderParticipant); // the m-lines may carry other tracks now
    });
  }

  function onServerAnswer(conn, desc) {
    enqueue(conn, async () => {
      if (!conn.pc || conn.pc.signalingState !== 'have-local-offer') {
        console.warn('hearth: ignoring an answer with no offer outstanding');
        return;
      }
      await conn.pc.setRemoteDescription({ type: 'answer', sdp: desc.sdp || '' });
      await flushCandidates(conn);
    });
  }

  // Server ICE candidate; queued until a remote description exists.
  async function onServerCandidate(conn, c) {
    if (!c.candidate) return;
    const init = {
      candidate: c.candidate, sdpMid: c.sdpMid || null,
      sdpMLineIndex: c.sdpMLineIndex || 0, usernameFragment: c.usernameFragment || null,
    };
    if (conn.pc && conn.pc.remoteDescription) await addCandidate(conn.pc, init);
    else conn.pendingCandidates.push(init);
  }

  async function flushCandidates(conn) {
    for (const init of conn.pendingCandidates.splice(0)) await addCandidate(conn.pc, init);
  }

  function addCandidate(pc, init) {
    return pc.addIceCandidate(init).catch((err) => console.debug('hearth: ignoring an ICE candidate', err));
  }

  // Forwarded tracks carry the publisher's participant id as their MediaStream id.
  function onRemoteTrack(ev) {
    const stream = ev.streams[0];
    if (!stream) return console.warn('hearth: remote track without a stream id: whose is it?');
    const id = stream.id;
    if (departed.has(id)) return;
    remoteTracks.set(ev.track.id, { participant: id, track: ev.track, transceiver: ev.transceiver, stream });
    const refresh = () => renderParticipant(participants.get(id));
    stream.onremovetrack = (e) => {
      const entry = remoteTracks.get(e.track.id);
      if (entry && entry.stream === stream) remoteTracks.delete(e.track.id);
      refresh();
    };
    stream.onaddtrack = ev.track.onmute = ev.track.onunmute = ev.track.onended = refresh;
    const p = upsertParticipant({ id });
    if (ev.track.kind === 'video' && !isRemoteScreen(remoteTracks.get(ev.track.id))) p.videoWithdrawn = false;
    p.stream = stream;
    renderParticipant(p);
  }

  // The server's track id (`TR_...`) a received track carries now: the `a=msid` of its
  // m-line in the remote description (a receiver's own MediaStreamTrack.id is the
  // browser's, and the server may reuse an m-line for another track).
  let msidCache = { sdp: null, ids: new Map() };
  function serverTrackId(entry) {
    const pc = current && current.pc;
    const mid = entry && entry.transceiver.mid;
    if (!pc || mid == null) return '';
    const sdp = (pc.remoteDescription && pc.remoteDescription.sdp) || '';
    if (sdp !== msidCache.sdp) {
      const ids = new Map();
      for (const section of sdp.split(/\r?\nm=/).slice(1)) {
        const m = /^a=mid:(\S+)/m.exec(section), msid = /^a=msid:\S+ (\S+)/m.exec(section);
        if (m && msid) ids.set(m[1], msid[1]);
      }
      msidCache = { sdp, ids };
    }
    return msidCache.ids.get(mid) || '';
  }

  // TrackInfo of a received track, if announced (and not withdrawn).
  function remoteTrackInfo(entry) {
    const p = entry && participants.get(entry.participant);
    return (p && p.tracks.get(serverTrackId(entry))) || null;
  }

  // A screen share stays one after `trackUnpublished`, so it never lands in the camera tile.
  const isRemoteScreen = (entry) => Boolean(entry) && screenTrackIds.has(serverTrackId(entry));

  // ---- Local media -------------------------------------------------------------------

  const CODEC = (new URLSearchParams(location.search).get('codec') || '').toLowerCase();
  // VP9 and AV1 go out as one scalable stream (spatial layers the server drops per
  // subscriber: VP9's named by its payload descriptor, AV1's by the dependency descriptor
  // the server negotiates) unless `&svc=` says otherwise (`&svc=0`: one plain stream).
  const svcParam = new URLSearchParams(location.search).get('svc');
  const SVC = svcParam === '0' ? '' : (svcParam ?? (CODEC === 'vp9' || CODEC === 'av1' ? 'L3T3_KEY' : ''));
  const SIMULCAST = new URLSearchParams(location.search).get('simulcast') !== '0' && CODEC !== 'av1';
  // Lowest first. Two, not three: Chromium sends only as many layers as the capture size
  // allows (two at 640x360, and it drops the top one), so a third, smaller layer would cost
  // the full-size one at common webcam sizes. The small layer is what a subscriber on a poor
  // link gets: capped at 200 kbit/s (LiveKit's 180p preset is 160), so it fits a 300 kbit/s
  // path with audio.
  const SIMULCAST_LAYERS = [
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 200_000 },
    { rid: 'f', maxBitrate: 1_500_000 },
  ];

  // ---- Adaptive streaming: each remote tile's visibility and height, told to the server
  // (trackSettings) whenever they change, so hidden tiles cost nothing and simulcast
  // tracks come in the layer that fits.
  const tileState = new WeakMap(); // tile root -> { p, visible, height }
  const sentSettings = new Map(); // track id -> what was last sent
  const intersection = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const st = tileState.get(e.target);
      if (st) { st.visible = e.isIntersecting; reportTiles(st.p); }
    }
  });
  const resize = new ResizeObserver((entries) => {
    for (const e of entries) {
      const st = tileState.get(e.target);
      if (st) { st.height = Math.round(e.contentRect.height * (window.devicePixelRatio || 1)); reportTiles(st.p); }
    }
  });

  function observeTile(p, tile) {
    if (p.isSelf || tileState.has(tile.root)) return;
    tileState.set(tile.root, { p, visible: true, height: 0 });
    intersection.observe(tile.root);
    resize.observe(tile.root);
  }

  function reportTiles(p) {
    if (!current || !current.joined || p.isSelf) return;
    for (const t of p.tracks.values()) {
      if (t.kind !== 'VIDEO') continue;
      const tile = t.source === 'SCREEN' ? p.screen && p.screen.tile : p.tile;
      const st = tile && tileState.get(tile.root);
      if (!st) continue;
      const visible = st.visible && tile.root.isConnected && !document.hidden;
      const key = `${visible}:${st.height}`;
      if (sentSettings.get(t.id) === key) continue;
      sentSettings.set(t.id, key);
      send(current, { trackSettings: { trackId: t.id, visible, height: st.height } });
    }
  }
  document.addEventListener('visibilitychange', () => participants.forEach(reportTiles));

  async function publishLocalMedia(conn) {
    const pending = localMedia || (localMedia = acquireLocalMedia());
    const stream = await pending;
    if (stream && pending !== localMedia) stream.getTracks().forEach((t) => t.stop()); // session ended
    if (conn !== current || !stream) return;
    localStream = stream;
    // addTransceiver, not addTrack: addTrack would reuse one of the server's receive-only
    // m-lines (a subscription) and mix our track into it. Publishing gets its own m-lines.
    for (const track of stream.getTracks()) {
      const init = { direction: 'sendonly', streams: [stream] };
      // The camera in two simulcast layers (half and full size): each subscriber gets the
      // one that fits its tile. `?simulcast=0` sends one.
      // `&svc=L3T3_KEY` (the default with `&codec=vp9`): one stream whose spatial layers
      // the server drops per subscriber, instead of simulcast.
      if (track.kind === 'video' && SVC) init.sendEncodings = [{ scalabilityMode: SVC }];
      else if (track.kind === 'video' && SIMULCAST) init.sendEncodings = SIMULCAST_LAYERS;
      const transceiver = conn.pc.addTransceiver(track, init);
      if (track.kind === 'video') preferVideoCodec(transceiver);
    }
    const self = participants.get(selfId);
    if (self) {
      self.stream = stream;
      attachStream(self);
    }
    applyLocalMute();
  }

  // Dynacast: the server says which layers of our simulcast camera nobody receives; the
  // browser stops encoding them (and starts again when a later message leaves them out).
  // Each message replaces the last for that track; the lowest layer is never paused.
  function applyPublishLayers(conn, m) {
    const self = participants.get(selfId);
    const track = self && self.tracks.get(m.trackId);
    const transceiver = track && track.mid && conn.pc && conn.pc.getTransceivers().find((t) => t.mid === track.mid);
    if (!transceiver) return undefined;
    const paused = new Set((m.pausedLayers || []).map(Number));
    const params = transceiver.sender.getParameters();
    const encodings = params.encodings || [];
    if (encodings.length < 2) return undefined;
    let changed = false;
    encodings.forEach((e, i) => {
      const active = i === 0 || !paused.has(i);
      if (e.active !== active) { e.active = active; changed = true; }
    });
    return changed ? transceiver.sender.setParameters(params) : undefined;
  }

  // `?codec=h264` (or vp8) puts that codec first in our video offer; the default is the
  // browser's own order (VP8 first in Chromium).
  function preferVideoCodec(transceiver) {
    const want = (new URLSearchParams(location.search).get('codec') || '').toLowerCase();
    if (!want || !transceiver.setCodecPreferences || !RTCRtpSender.getCapabilities) return;
    const codecs = RTCRtpSender.getCapabilities('video').codecs;
    const first = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${want}`);
    if (!first.length) return console.warn(`hearth: this browser cannot send ${want}`);
    transceiver.setCodecPreferences([...first, ...codecs.filter((c) => !first.includes(c))]);
  }

  // Camera and microphone, else microphone only, else receive-only; says so on the page.
  async function acquireLocalMedia() {
    const devices = navigator.mediaDevices;
    if (!devices || !devices.getUserMedia) {
      setMediaNote('No camera or microphone access here (the page needs HTTPS or localhost): receive-only.');
      return null;
    }
    let reason = '';
    // `&media=0`: join as a viewer that sends nothing (webinars, constrained-link tests).
    if (new URLSearchParams(location.search).get('media') === '0') {
      setMediaNote('Joined as a viewer: nothing is sent.');
      return null;
    }
    // `&video=0`: join with the microphone only (audio calls, captions tests).
    const audioOnlyWanted = new URLSearchParams(location.search).get('video') === '0';
    if (!audioOnlyWanted) {
      try { return await devices.getUserMedia(MEDIA); } catch (err) { reason = err.name; }
    }
    try {
      const audioOnly = await devices.getUserMedia({ audio: true });
      if (!audioOnlyWanted) setMediaNote(`Camera unavailable (${reason}): joined with audio only.`);
      return audioOnly;
    } catch (err) {
      setMediaNote(`Camera and microphone unavailable (${err.name}): receive-only.`);
      return null;
    }
  }

  function stopLocalMedia() {
    stopScreenShare();
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = localMedia = null;
    micMuted = cameraMuted = false;
    setMediaNote('');
    renderControls();
  }

  function setMicMuted(muted) { micMuted = Boolean(muted); applyLocalMute(); }
  function setCameraMuted(muted) { cameraMuted = Boolean(muted); applyLocalMute(); }

  // Mute = track.enabled = false locally, plus `mute` with the server's id of that track.
  function applyLocalMute() {
    if (localStream) {
      localStream.getAudioTracks().forEach((t) => { t.enabled = !micMuted; });
      localStream.getVideoTracks().forEach((t) => { t.enabled = !cameraMuted; });
    }
    const self = participants.get(selfId);
    if (current && self) self.tracks.forEach((track) => syncOwnMute(current, track));
    renderControls();
    renderParticipant(self);
  }

  // Tells the server when one of our tracks' mute state differs from what we want.
  // The server names our tracks in `trackPublished` with their mid: our transceiver's.
  function syncOwnMute(conn, track) {
    const transceiver = track.mid && conn.pc && conn.pc.getTransceivers().find((t) => t.mid === track.mid);
    const sender = transceiver && transceiver.sender.track;
    const kind = sender ? sender.kind : { AUDIO: 'audio', VIDEO: 'video' }[track.kind];
    if (!kind) return;
    const isScreen = track.source === 'SCREEN' || Boolean(screen && transceiver && transceiver === screen.transceiver);
    const muted = kind === 'audio' ? micMuted : !isScreen && cameraMuted;
    if (track.muted === muted) return;
    track.muted = muted;
    send(conn, { mute: { trackId: track.id, muted } });
  }

  // ---- Screen share ------------------------------------------------------------------

  // Asks the browser for a screen (it shows its own picker) and publishes it on its own
  // m-line, declared SCREEN in our offers.
  async function startScreenShare() {
    if (screen || screenPending || !current || !current.pc || !canShareScreen) return;
    screenPending = true;
    renderControls();
    let stream = null;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true });
    } catch (err) {
      if (err.name !== 'NotAllowedError') showNotice(`Could not share the screen (${err.name}).`, 'warn');
    } finally {
      screenPending = false;
    }
    const track = stream && stream.getVideoTracks()[0];
    const conn = current;
    if (!track || !conn || !conn.pc || screen) {
      if (stream) stream.getTracks().forEach((t) => t.stop());
      return renderControls();
    }
    stream.getAudioTracks().forEach((t) => { t.stop(); stream.removeTrack(t); }); // video only
    const tile = createTile(false, true);
    tile.video.srcObject = stream;
    tile.video.play().catch(() => {});
    screen = { stream, track, transceiver: null, conn: null, tile };
    track.onended = () => stopScreenShare(); // the browser's own "Stop sharing"
    publishScreen(conn);
    renderControls();
    const self = participants.get(selfId);
    if (self) renderParticipant(self);
  }

  function publishScreen(conn) {
    if (!screen || screen.track.readyState !== 'live' || !conn.pc || screen.conn === conn) return;
    screen.conn = conn;
    screen.transceiver = conn.pc.addTransceiver(screen.track, { direction: 'sendonly', streams: [screen.stream] });
    const self = participants.get(selfId);
    if (self) renderParticipant(self);
  }

  // Withdraws the share: `unpublish` with the server's id of its track (from
  // `trackPublished`, by mid), and the transceiver stops (the next offer drops its m-line).
  function stopScreenShare() {
    const s = screen;
    if (!s) return;
    screen = null;
    s.track.onended = null;
    s.track.stop();
    s.tile.video.srcObject = null;
    s.tile.root.remove();
    const conn = s.conn, pc = conn && conn.pc;
    if (conn && conn === current && pc && pc.signalingState !== 'closed') {
      const self = participants.get(selfId);
      const mid = s.transceiver.mid;
      const published = self && mid != null && [...self.tracks.values()].find((t) => t.mid === mid);
      if (published) {
        send(conn, { unpublish: { trackId: published.id } });
        self.tracks.delete(published.id);
      }
      try { s.transceiver.stop(); } catch (err) { console.debug('hearth: stopping the screen transceiver', err); }
    }
    renderControls();
  }

  const hasLocal = (kind) => Boolean(localStream && localStream.getTracks().some((t) => t.kind === kind));

  // ---- Participants, tiles and the list ----------------------------------------------

  // Creates or updates a participant from a (partial) ParticipantInfo.
  function upsertParticipant(info, isSelf = false) {
    if (!info.id) return null;
    let p = participants.get(info.id);
    if (!p) {
      p = {
        id: info.id, isSelf, name: '', identity: '', tracks: new Map(), stream: isSelf ? localStream : null,
        // Remote: what the camera tile plays (the received stream minus screen shares),
        // and the screen share's own tile while there is one.
        view: isSelf ? null : new MediaStream(), screen: null,
        videoWithdrawn: false, tile: createTile(isSelf), item: createListItem(),
      };
      participants.set(p.id, p);
      ui.grid.append(p.tile.root);
      ui.list.append(p.item.root);
      attachStream(p);
      observeTile(p, p.tile);
    }
    if (info.name) p.name = info.name;
    if (info.identity) p.identity = info.identity;
    for (const track of info.tracks || []) p.tracks.set(track.id, normalizeTrack(track));
    renderParticipant(p);
    reportTiles(p);
    renderCount();
    return p;
  }

  // Also remembers which track ids are screen shares (see isRemoteScreen).
  const normalizeTrack = (t) => {
    const track = {
      id: t.id || '', kind: t.kind || 'TRACK_KIND_UNSPECIFIED', muted: Boolean(t.muted), mid: t.mid || '',
      source: t.source || 'TRACK_SOURCE_UNSPECIFIED',
    };
    if (track.source === 'SCREEN') screenTrackIds.add(track.id);
    return track;
  };

  function removeParticipant(id) {
    departed.add(id);
    for (const [trackId, entry] of remoteTracks) if (entry.participant === id) remoteTracks.delete(trackId);
    const p = participants.get(id);
    if (!p) return;
    p.tile.video.srcObject = null;
    p.tile.root.remove();
    setScreenTile(p, null);
    if (p.isSelf && screen) screen.tile.root.remove(); // put back next to the new self tile
    p.item.root.remove();
    participants.delete(id);
    renderCount();
  }

  function clearParticipants() {
    for (const id of [...participants.keys()]) removeParticipant(id);
    remoteTracks.clear();
    departed.clear();
    screenTrackIds.clear();
  }

  function createTile(isSelf, isScreen = false) {
    // Remote tiles also play the audio; our own is muted (never play our microphone back).
    // Screen tiles carry video only.
    const video = Object.assign(el('video'), { autoplay: true, playsInline: true, muted: isSelf || isScreen });
    const avatar = el('div', 'avatar');
    avatar.setAttribute('aria-hidden', 'true');
    const mic = el('span', 'mic-state');
    const name = el('span', 'name');
    const caption = el('figcaption', 'tile-label', mic, name);
    const captions = el('div', 'captions');
    captions.setAttribute('aria-live', 'polite');
    const stats = el('pre', 'tile-stats');
    stats.hidden = true;
    const root = el('figure', isScreen ? 'tile screen' : isSelf ? 'tile self' : 'tile', video, avatar, captions, caption, stats);
    return { root, video, avatar, mic, name, captions, stats };
  }

  function createListItem() {
    const [name, mic, cam] = [el('span', 'name'), el('span', 'icon'), el('span', 'icon')];
    for (const icon of [mic, cam]) icon.setAttribute('role', 'img');
    return { root: el('li', 'person', name, mic, cam), name, mic, cam };
  }

  function attachStream(p) {
    const stream = p.isSelf ? p.stream : p.view;
    if (stream && stream.getTracks().length) playIn(p.tile.video, stream);
  }

  function playIn(video, stream) {
    if (video.srcObject === stream) return;
    video.srcObject = stream;
    video.play().catch((err) => {
      if (err.name !== 'NotAllowedError') return; // AbortError: a newer srcObject replaced it
      showNotice('The browser blocked audio playback: click anywhere to enable it.');
      document.addEventListener('click', () => {
        document.querySelectorAll('#grid video').forEach((v) => v.play().catch(() => {}));
        showNotice('');
      }, { once: true });
    });
  }

  // Draws one participant's tile and list entry from the model.
  function renderParticipant(p) {
    if (!p) return;
    syncRemoteMedia(p);
    const label = p.isSelf ? `${displayName(p)} (you)` : displayName(p);
    const micOff = p.isSelf ? (!hasLocal('audio') || micMuted) : allMuted(tracksOfKind(p, 'AUDIO'));
    const camOff = p.isSelf ? (!hasLocal('video') || cameraMuted) : remoteVideoOff(p);
    const speaking = activeSpeakers.includes(p.id);
    const { tile, item } = p;
    tile.root.classList.toggle('no-video', camOff);
    tile.root.classList.toggle('speaking', speaking);
    tile.root.classList.toggle('loudest', activeSpeakers[0] === p.id);
    tile.name.textContent = label;
    tile.avatar.textContent = (label.trim()[0] || '?').toUpperCase();
    tile.mic.textContent = micOff ? '🔇' : '';
    tile.mic.title = micOff ? 'microphone muted' : '';
    item.root.classList.toggle('speaking', speaking);
    item.name.textContent = label;
    setIcon(item.mic, micOff ? '🔇' : '🎙️', micOff ? 'microphone muted' : 'microphone on');
    setIcon(item.cam, camOff ? '🚫' : '📷', camOff ? 'camera off' : 'camera on');
  }

  function remoteVideoOff(p) {
    const live = p.view.getVideoTracks().some((t) => t.readyState === 'live');
    const video = cameraTracks(p);
    return !live || p.videoWithdrawn || (video.length > 0 && allMuted(video));
  }

  // Splits a remote participant's received stream: its screen share (if announced and
  // live) gets its own tile; everything else plays in the participant's tile.
  function syncRemoteMedia(p) {
    if (p.isSelf) {
      if (screen) {
        screen.tile.name.textContent = `${displayName(p)} (you, screen)`;
        if (!screen.tile.root.isConnected) p.tile.root.after(screen.tile.root);
      }
      return;
    }
    const received = p.stream ? p.stream.getTracks() : [];
    const entries = received.map((t) => remoteTracks.get(t.id));
    const shown = received.filter((t, i) => !isRemoteScreen(entries[i]));
    const share = received.find((t, i) => isRemoteScreen(entries[i]) && t.kind === 'video'
      && t.readyState === 'live' && remoteTrackInfo(entries[i]));
    for (const t of p.view.getTracks()) if (!shown.includes(t)) p.view.removeTrack(t);
    for (const t of shown) if (!p.view.getTrackById(t.id)) p.view.addTrack(t);
    attachStream(p);
    setScreenTile(p, share || null);
  }

  function setScreenTile(p, track) {
    if (!track) {
      if (p.screen) {
        p.screen.tile.video.srcObject = null;
        p.screen.tile.root.remove();
        p.screen = null;
      }
      return;
    }
    if (!p.screen || p.screen.track !== track) {
      setScreenTile(p, null);
      const tile = createTile(false, true);
      tile.root.dataset.participant = p.id;
      p.screen = { track, tile };
      p.tile.root.after(tile.root);
      playIn(tile.video, new MediaStream([track]));
      observeTile(p, tile);
    }
    p.screen.tile.name.textContent = `${displayName(p)} (screen)`;
  }

  const tracksOfKind = (p, kind) => [...p.tracks.values()].filter((t) => t.kind === kind);
  const cameraTracks = (p) => tracksOfKind(p, 'VIDEO').filter((t) => t.source !== 'SCREEN');
  const allMuted = (tracks) => tracks.every((t) => t.muted); // true when there is none
  const displayName = (p) => p.name || p.identity || p.id;

  function setIcon(node, glyph, label) {
    node.textContent = glyph;
    node.title = label;
    node.setAttribute('aria-label', label);
  }
  const renderCount = () => { ui.count.textContent = participants.size ? `(${participants.size})` : ''; };

  function setActiveSpeakers(ids) {
    activeSpeakers = ids.filter(Boolean);
    participants.forEach(renderParticipant);
  }

  // Toggle buttons keep their label ("Mute mic"); aria-pressed (and its style) is the state.
  function renderControls() {
    for (const [button, available, muted] of [
      [ui.micButton, hasLocal('audio'), micMuted], [ui.cameraButton, hasLocal('video'), cameraMuted]]) {
      button.disabled = !available;
      button.setAttribute('aria-pressed', String(muted));
    }
    ui.screenButton.hidden = !canShareScreen;
    ui.screenButton.disabled = screenPending;
    ui.screenButton.textContent = screen ? 'Stop sharing' : 'Share screen';
    ui.screenButton.setAttribute('aria-pressed', String(Boolean(screen)));
    ui.captionsButton.setAttribute('aria-pressed', String(captions.enabled));
    ui.captionsButton.textContent = captions.enabled ? 'Captions on' : 'Captions';
  }

  // ---- Page chrome -------------------------------------------------------------------

  const STATUS_TEXT = {
    idle: 'Not connected', joining: 'Joining…', joined: 'Connected', reconnecting: 'Reconnecting…',
    left: 'Left', ended: 'Meeting ended', error: 'Error',
  };

  function setState(next) {
    state = next;
    document.body.dataset.state = next;
    ui.status.textContent = STATUS_TEXT[next] || next;
    ui.joinButton.disabled = ACTIVE_STATES.includes(next);
  }

  function showNotice(text, kind = 'info') {
    ui.notice.textContent = text;
    ui.notice.dataset.kind = kind;
    ui.notice.hidden = !text;
  }

  // The meeting view (with the meeting's name in the title bar) or the join form.
  function showMeeting(visible, title = '') {
    ui.title.textContent = title;
    ui.meetingView.hidden = !visible;
    ui.joinView.hidden = visible;
  }

  function setMediaNote(text) { ui.mediaNote.textContent = text; ui.mediaNote.hidden = !text; }

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children);
    return node;
  }

  // Drops null/undefined fields: proto3 JSON omits what is unset.
  const compact = (object) => Object.fromEntries(Object.entries(object).filter(([, v]) => v != null));

  // ---- Automation API: window.hearth -------------------------------------------------

  // Counters of every remote track received now, from RTCPeerConnection.getStats().
  async function stats() {
    const result = { participantId: selfId, participants: [...participants.keys()], remote: [] };
    const pc = current && current.pc;
    if (!pc) return result;
    // Sections in the agreed description: stays bounded as others come and go.
    result.mLines = ((pc.currentLocalDescription && pc.currentLocalDescription.sdp) || '')
      .split('\n').filter((l) => l.startsWith('m=')).length;
    const report = [...(await pc.getStats()).values()];
    const inbound = report.filter((s) => s.type === 'inbound-rtp');
    const codecs = new Map(report.filter((s) => s.type === 'codec').map((c) => [c.id, c.mimeType]));
    for (const entry of remoteTracks.values()) {
      if (!isReceiving(entry)) continue;
      const info = remoteTrackInfo(entry);
      result.remote.push({
        participant: entry.participant, kind: entry.track.kind,
        source: isRemoteScreen(entry) ? 'SCREEN' : (info ? info.source : ''),
        ...countersOf(entry, inbound, codecs),
      });
    }
    return result;
  }

  function isReceiving({ track, transceiver }) {
    const direction = transceiver.currentDirection; // null until the answer is applied
    return track.readyState === 'live' && !['inactive', 'sendonly', 'stopped'].includes(direction);
  }

  // ---- Stats overlay: per tile, what is received (resolution, codec, bitrate, loss) and the
  // connection's round-trip time, refreshed every second while the Stats button is on.
  const statsOverlay = { on: false, timer: null, last: new Map(), lines: new Map() };

  function setStatsOverlay(on) {
    statsOverlay.on = on;
    ui.statsButton.setAttribute('aria-pressed', String(on));
    clearInterval(statsOverlay.timer);
    statsOverlay.timer = on ? setInterval(() => refreshStatsOverlay().catch(() => {}), 1000) : null;
    if (on) refreshStatsOverlay().catch(() => {});
    document.querySelectorAll('#grid .tile-stats').forEach((s) => { s.hidden = !on; });
  }

  async function refreshStatsOverlay() {
    const pc = current && current.pc;
    if (!pc || !statsOverlay.on) return;
    const report = [...(await pc.getStats()).values()];
    const byId = new Map(report.map((s) => [s.id, s]));
    const transport = report.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = transport && byId.get(transport.selectedCandidatePairId);
    const rtt = pair && pair.currentRoundTripTime !== undefined ? `${Math.round(pair.currentRoundTripTime * 1000)} ms` : '-';
    const now = performance.now();
    const lines = new Map(); // tile -> text lines
    for (const entry of remoteTracks.values()) {
      if (!isReceiving(entry)) continue;
      const p = participants.get(entry.participant);
      if (!p) continue;
      const tile = isRemoteScreen(entry) && p.screen ? p.screen.tile : p.tile;
      const s = report.find((r) => r.type === 'inbound-rtp' && r.trackIdentifier === entry.track.id)
        || report.find((r) => r.type === 'inbound-rtp' && r.mid === entry.transceiver.mid && r.kind === entry.track.kind);
      if (!s) continue;
      const prev = statsOverlay.last.get(s.id);
      statsOverlay.last.set(s.id, { bytes: s.bytesReceived || 0, at: now });
      const kbps = prev && now > prev.at ? Math.round(((s.bytesReceived - prev.bytes) * 8) / (now - prev.at)) : 0;
      const lost = Math.max(0, s.packetsLost || 0);
      const loss = s.packetsReceived ? ((100 * lost) / (lost + s.packetsReceived)).toFixed(1) : '0.0';
      const codec = ((byId.get(s.codecId) || {}).mimeType || '').split('/')[1] || '?';
      const what = entry.track.kind === 'video'
        ? `video ${s.frameWidth || 0}x${s.frameHeight || 0} ${Math.round(s.framesPerSecond || 0)} fps`
        : 'audio';
      const line = { kind: entry.track.kind, codec, kbps, loss: Number(loss), width: s.frameWidth || 0, height: s.frameHeight || 0, rtt };
      const text = `${what} ${codec} ${kbps} kbit/s loss ${loss}%`;
      if (!lines.has(tile)) lines.set(tile, { text: [], data: [] });
      lines.get(tile).text.push(text);
      lines.get(tile).data.push({ participant: entry.participant, ...line });
    }
    statsOverlay.lines = new Map();
    document.querySelectorAll('#grid .tile-stats').forEach((el) => { el.textContent = ''; });
    for (const [tile, { text, data }] of lines) {
      tile.stats.textContent = [...text, `rtt ${rtt}`].join('\n');
      tile.stats.hidden = false;
      statsOverlay.lines.set(tile, data);
    }
  }

  // Inbound-rtp stats of one track: by track identifier, else by mid. Summed, since a
  // reused receiver keeps the stats of its previous SSRC for a while.
  function countersOf({ track, transceiver }, inbound, codecs) {
    let matches = inbound.filter((s) => s.trackIdentifier === track.id);
    if (!matches.length && transceiver.mid !== null) {
      matches = inbound.filter((s) => s.mid === transceiver.mid && s.kind === track.kind);
    }
    const sum = (field) => matches.reduce((total, s) => total + (s[field] || 0), 0);
    return {
      bytesReceived: sum('bytesReceived'),
      packetsReceived: sum('packetsReceived'),
      framesDecoded: track.kind === 'video' ? sum('framesDecoded') : 0,
      freezeCount: sum('freezeCount'),
      totalFreezesDuration: sum('totalFreezesDuration'),
      frameWidth: Math.max(0, ...matches.map((s) => s.frameWidth || 0)),
      frameHeight: Math.max(0, ...matches.map((s) => s.frameHeight || 0)),
      codec: (matches.map((s) => codecs.get(s.codecId)).find(Boolean) || ''),
    };
  }

  // The candidate pair media flows on: local/remote candidate types ('host', 'srflx',
  // 'prflx', 'relay') and, for relayed ones, how we reach the TURN server.
  async function selectedCandidateTypes() {
    const pc = current && current.pc;
    if (!pc) return null;
    const report = [...(await pc.getStats()).values()];
    const byId = new Map(report.map((s) => [s.id, s]));
    const transport = report.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = transport ? byId.get(transport.selectedCandidatePairId)
      : report.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
    if (!pair) return null;
    const local = byId.get(pair.localCandidateId) || {};
    const remote = byId.get(pair.remoteCandidateId) || {};
    return { local: local.candidateType, remote: remote.candidateType, relayProtocol: local.relayProtocol || '' };
  }

  Object.defineProperty(window, 'hearth', {
    enumerable: true,
    value: Object.freeze({
      get state() { return state; },
      get lastError() { return lastError; },
      // Every time the session restarted (server's reconnect, lost socket or media), why.
      get reconnects() { return reconnectLog.map((r) => ({ ...r })); },
      get activeSpeakers() { return activeSpeakers.slice(); },
      get participantId() { return selfId; },
      get messages() { return messages.map((m) => ({ ...m, at: m.at.getTime() })); },
      get sharingScreen() { return Boolean(screen); },
      get captionsState() { return { ...captions }; },
      get meetingStartedAt() { return meetingStartedAt; },
      // The signaling endpoint of the node this page is joined at (after redirects).
      get signalUrl() { return (current && current.ws.url) || ''; },
      // The caption segments received so far, latest text of each, in arrival order.
      captions: () => Promise.resolve([...captionSegments.values()].map((c) => ({ ...c }))),
      // The stats overlay: turn it on or off; what its tiles show now.
      setStatsOverlay,
      statsOverlay: () => [...statsOverlay.lines.values()].flat().map((l) => ({ ...l })),
      setCaptions: (enabled) => toggleCaptions(Boolean(enabled)),
      stats, leave, setMicMuted, setCameraMuted, selectedCandidateTypes, startScreenShare, stopScreenShare,
      // Data channels: send on `chat` or `lossy` (string or ArrayBuffer); what arrived.
      sendData,
      get dataReceived() { return dataReceived.map((d) => ({ ...d })); },
      get dataChannelsOpen() {
        const c = current && current.channels;
        return c ? Object.keys(c).filter((l) => c[l].readyState === 'open') : [];
      },
      // The session's RTCPeerConnection (benchmarks read its getStats directly).
      peerConnection: () => (current && current.pc) || null,
      // Test hook: closes the peer connection (DTLS close_notify) without a signaling leave.
      closeMediaOnly: () => { if (current && current.pc) current.pc.close(); },
      // What our camera sends, per simulcast layer.
      outboundLayers: async () => {
        const pc = current && current.pc;
        if (!pc) return [];
        return [...(await pc.getStats()).values()]
          .filter((s) => s.type === 'outbound-rtp' && s.kind === 'video')
          .map((s) => ({ rid: s.rid || '', width: s.frameWidth || 0, height: s.frameHeight || 0, bytesSent: s.bytesSent || 0, active: s.active !== false, scalabilityMode: s.scalabilityMode || '' }));
      },
      join: (meeting, name, token) => startSession({ meeting, name, token }),
    }),
  });

  // ---- Wiring ------------------------------------------------------------------------

  function onJoinSubmit(ev) {
    ev.preventDefault();
    const meeting = ui.meetingInput.value.trim();
    const name = ui.nameInput.value.trim();
    const token = ui.tokenRow.hidden ? '' : ui.tokenInput.value.trim();
    if (!token && (!meeting || !name)) {
      showNotice('Enter a meeting and your name (or paste a token).', 'warn');
      (meeting ? ui.nameInput : ui.meetingInput).focus();
      return;
    }
    startSession({ meeting, name, token });
  }

  function init() {
    const params = new URLSearchParams(location.search);
    const token = params.get('token') || '';
    ui.meetingInput.value = params.get('meeting') || '';
    ui.nameInput.value = params.get('name') || '';
    ui.tokenInput.value = token;
    ui.tokenRow.hidden = !token;
    ui.joinForm.addEventListener('submit', onJoinSubmit);
    ui.tokenToggle.addEventListener('click', () => {
      ui.tokenRow.hidden = !ui.tokenRow.hidden;
      if (!ui.tokenRow.hidden) ui.tokenInput.focus();
    });
    ui.micButton.addEventListener('click', () => setMicMuted(!micMuted));
    ui.cameraButton.addEventListener('click', () => setCameraMuted(!cameraMuted));
    ui.screenButton.addEventListener('click', () => (screen ? stopScreenShare() : startScreenShare()));
    ui.captionsButton.addEventListener('click', () => toggleCaptions());
    ui.statsButton.addEventListener('click', () => setStatsOverlay(!statsOverlay.on));
    ui.leaveButton.addEventListener('click', leave);
    ui.chatForm.addEventListener('submit', onChatSubmit);
    // Tell the others right away when the tab closes.
    window.addEventListener('pagehide', () => { if (current) send(current, { leave: {} }); });
    renderControls();
    setState('idle');
    wantCaptions = params.get('captions') === '1';
    if (params.get('autojoin') === '1') {
      startSession({ meeting: ui.meetingInput.value.trim(), name: ui.nameInput.value.trim(), token });
    }
  }

  init();
})();
