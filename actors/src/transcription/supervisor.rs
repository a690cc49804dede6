//! The embedded engine's worker pool: a `TranscriptionSupervisor` actor (child of the node
//! supervisor) and one `SttWorker` actor per `hearth-stt` process.
//!
//! Workers start on the first utterance (or when captions are turned on) and stop after
//! `idle_stop` without work, so a node that never transcribes holds no model in memory.
//! Each worker decodes one utterance at a time on one thread; the number of workers is the
//! CPU transcription may take (`--transcription-threads`).
//!
//! Queue policy (load shedding): an interim job runs only on an idle worker, and with more
//! than one worker only if another stays idle for finals; else it is skipped. A final job
//! goes to an idle worker or waits in a queue of at most `max_queue`, and is dropped when it
//! cannot start before its deadline.
//!
//! Supervision: a worker whose process dies, hangs past `decode_timeout` or speaks garbage
//! fails; its utterance is answered with an engine error; the supervisor restarts it with
//! exponential backoff (1 s to 60 s), counted in `hearth_actor_restarts_total` and shown in
//! `hearthctl tree`. A worker that cannot load the model reports why
//! ([`super::Transcription::unavailable`]) and is retried with the same backoff.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hearth_engine::stt_wire::{self, FrameReader, SttMessage};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;

use super::{SttError, SttJob, SttOutput, Transcription};
use crate::registry::{ActorKind, ActorRegistry, ActorSpec, Registration};

type Reply = oneshot::Sender<Result<SttOutput, SttError>>;

pub enum SupervisorMsg {
    /// Transcribe (answer on the sender).
    Submit(SttJob, Reply),
    /// Start the workers now (captions were turned on).
    Warm,
    /// A worker loaded its model and takes work.
    Ready(ActorId),
    /// A worker finished its job.
    Idle(ActorId),
    /// Housekeeping: expired queue entries, due restarts, idle stop.
    Tick,
}

pub struct TranscriptionSupervisor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Not running (never started, stopped idle, or waiting to restart).
    Down,
    Starting,
    Idle,
    Busy,
}

struct Slot {
    actor: Option<ActorRef<WorkerMsg>>,
    state: SlotState,
    restarts: u32,
    /// Consecutive failures (backoff); reset by a successful start.
    failures: u32,
    retry_at: Option<Instant>,
    last_failure: Option<String>,
}

pub struct SupervisorState {
    t: Arc<Transcription>,
    actors: Arc<ActorRegistry>,
    slots: Vec<Slot>,
    queue: VecDeque<(SttJob, Reply)>,
    /// When the pool last had work (idle stop).
    last_work: Instant,
    /// Whether the pool should run (something asked for it since the idle stop).
    wanted: bool,
    reg: Registration,
}

impl Actor for TranscriptionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (Arc<Transcription>, Arc<ActorRegistry>, ActorId, u32);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (t, actors, parent, restarts): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let reg = actors.register(
            ActorSpec::new(
                myself.get_id(),
                ActorKind::TranscriptionSupervisor,
                "transcription",
            )
            .parent(parent)
            .restarted(restarts, None),
        );
        let slots = (0..t.config.embedded.workers.max(1))
            .map(|_| Slot {
                actor: None,
                state: SlotState::Down,
                restarts: 0,
                failures: 0,
                retry_at: None,
                last_failure: None,
            })
            .collect();
        myself.send_interval(Duration::from_millis(250), || SupervisorMsg::Tick);
        t.set_supervisor(Some(myself.clone()));
        Ok(SupervisorState {
            t,
            actors,
            slots,
            queue: VecDeque::new(),
            last_work: Instant::now(),
            wanted: false,
            reg,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.t.set_supervisor(None);
        for (_, reply) in state.queue.drain(..) {
            let _ = reply.send(Err(SttError::Unavailable(
                "the transcription supervisor stopped".into(),
            )));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        let now = Instant::now();
        match msg {
            SupervisorMsg::Submit(job, reply) => {
                state.last_work = now;
                state.wanted = true;
                state.ensure_started(&myself, now).await;
                // With more than one worker, one is kept free of interims: a final (what
                // everyone keeps) never waits behind an interim (what the next one replaces).
                let idle = state
                    .slots
                    .iter()
                    .filter(|s| s.state == SlotState::Idle)
                    .count();
                let interim_ok = state.slots.len() == 1 || idle >= 2;
                if let Some(i) = state.idle_slot().filter(|_| !job.interim || interim_ok) {
                    state.dispatch(i, job, reply);
                } else if job.interim {
                    state
                        .t
                        .stats
                        .interims_skipped
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(SttError::Overloaded));
                } else if !state.any_alive() {
                    let why = state.unavailable_reason();
                    let _ = reply.send(Err(SttError::Unavailable(why)));
                } else if state.queue.len() >= state.t.config.max_queue {
                    let _ = reply.send(Err(SttError::Overloaded));
                } else {
                    state.queue.push_back((job, reply));
                    metrics::gauge!("hearth_transcription_queue").set(state.queue.len() as f64);
                }
            }
            SupervisorMsg::Warm => {
                state.last_work = now;
                state.wanted = true;
                state.ensure_started(&myself, now).await;
            }
            SupervisorMsg::Ready(id) => {
                if let Some(i) = state.slot_of(&id) {
                    let slot = &mut state.slots[i];
                    slot.state = SlotState::Idle;
                    slot.failures = 0;
                    slot.last_failure = None;
                    state.t.set_embedded_failure(None);
                    state.pump(i, now);
                }
            }
            SupervisorMsg::Idle(id) => {
                if let Some(i) = state.slot_of(&id) {
                    if state.slots[i].state == SlotState::Busy {
                        state.slots[i].state = SlotState::Idle;
                    }
                    state.pump(i, now);
                }
            }
            SupervisorMsg::Tick => {
                state.shed_expired(now);
                if state.wanted {
                    state.ensure_started(&myself, now).await;
                }
                let busy = state
                    .slots
                    .iter()
                    .any(|s| matches!(s.state, SlotState::Busy | SlotState::Starting));
                if state.wanted
                    && !busy
                    && state.queue.is_empty()
                    && now.duration_since(state.last_work) >= state.t.config.embedded.idle_stop
                {
                    tracing::info!("speech workers idle: stopping them");
                    state.wanted = false;
                    for slot in &mut state.slots {
                        if let Some(actor) = slot.actor.take() {
                            actor.stop(Some("idle".into()));
                        }
                        slot.state = SlotState::Down;
                        slot.retry_at = None;
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (id, failure) = match &event {
            SupervisionEvent::ActorFailed(cell, error) => (cell.get_id(), Some(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell.get_id(), None),
            _ => return Ok(()),
        };
        let Some(i) = state.slot_of(&id) else {
            return Ok(());
        };
        let now = Instant::now();
        let slot = &mut state.slots[i];
        slot.actor = None;
        slot.state = SlotState::Down;
        if let Some(error) = failure {
            slot.failures += 1;
            slot.restarts += 1;
            let backoff =
                Duration::from_secs(1 << (slot.failures - 1).min(6)).min(Duration::from_secs(60));
            slot.retry_at = Some(now + backoff);
            tracing::warn!(worker = i, %error, ?backoff, "speech worker failed; restarting after backoff");
            slot.last_failure = Some(error.clone());
            state
                .t
                .stats
                .worker_failures
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("hearth_actor_failures_total", "kind" => "stt_worker").increment(1);
            state
                .reg
                .failure(format!("speech worker {i} failed: {error}"));
        }
        if !state.any_alive() && !state.queue.is_empty() {
            let why = state.unavailable_reason();
            for (_, reply) in state.queue.drain(..) {
                let _ = reply.send(Err(SttError::Unavailable(why.clone())));
            }
        }
        Ok(())
    }
}

impl SupervisorState {
    fn slot_of(&self, id: &ActorId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.actor.as_ref().is_some_and(|a| a.get_id() == *id))
    }

    fn idle_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.state == SlotState::Idle)
    }

    fn any_alive(&self) -> bool {
        self.slots.iter().any(|s| s.state != SlotState::Down)
            || self
                .slots
                .iter()
                .any(|s| s.retry_at.is_none() && s.state == SlotState::Down)
    }

    fn unavailable_reason(&self) -> String {
        self.t
            .unavailable(crate::domain::EngineKind::Embedded)
            .or_else(|| self.slots.iter().find_map(|s| s.last_failure.clone()))
            .unwrap_or_else(|| "no speech worker is running".into())
    }

    /// Starts every slot that is down and due.
    async fn ensure_started(&mut self, myself: &ActorRef<SupervisorMsg>, now: Instant) {
        if self.t.config.embedded.check().is_some() {
            return;
        }
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.state != SlotState::Down || slot.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            let args = WorkerArgs {
                t: Arc::clone(&self.t),
                actors: Arc::clone(&self.actors),
                supervisor: myself.clone(),
                index: i,
                restarts: slot.restarts,
                last_failure: slot.last_failure.clone(),
            };
            match Actor::spawn_linked(None, SttWorker, args, myself.get_cell()).await {
                Ok((actor, _)) => {
                    let slot = &mut self.slots[i];
                    slot.actor = Some(actor);
                    slot.state = SlotState::Starting;
                    slot.retry_at = None;
                    self.t.stats.worker_starts.fetch_add(1, Ordering::Relaxed);
                    if slot.restarts > 0 {
                        metrics::counter!("hearth_actor_restarts_total", "kind" => "stt_worker")
                            .increment(1);
                    }
                }
                Err(e) => {
                    let slot = &mut self.slots[i];
                    slot.failures += 1;
                    slot.restarts += 1;
                    let backoff = Duration::from_secs(1 << (slot.failures - 1).min(6))
                        .min(Duration::from_secs(60));
                    slot.retry_at = Some(now + backoff);
                    slot.last_failure = Some(e.to_string());
                    self.t.set_embedded_failure(Some(e.to_string()));
                    tracing::warn!(worker = i, error = %e, "cannot start a speech worker");
                }
            }
        }
    }

    /// Gives slot `i` (idle) the oldest queued job still in time.
    fn pump(&mut self, i: usize, now: Instant) {
        self.shed_expired(now);
        if self.slots[i].state != SlotState::Idle {
            return;
        }
        if let Some((job, reply)) = self.queue.pop_front() {
            self.dispatch(i, job, reply);
        }
        metrics::gauge!("hearth_transcription_queue").set(self.queue.len() as f64);
    }

    fn dispatch(&mut self, i: usize, job: SttJob, reply: Reply) {
        let slot = &mut self.slots[i];
        let Some(actor) = &slot.actor else {
            let _ = reply.send(Err(SttError::Unavailable("worker gone".into())));
            return;
        };
        slot.state = SlotState::Busy;
        if let Err(ractor::MessagingErr::SendErr(WorkerMsg::Job(_, reply))) =
            actor.send_message(WorkerMsg::Job(job, reply))
        {
            let _ = reply.send(Err(SttError::Engine("the speech worker stopped".into())));
            slot.state = SlotState::Down;
        }
    }

    fn shed_expired(&mut self, now: Instant) {
        while self
            .queue
            .front()
            .is_some_and(|(job, _)| job.deadline <= now)
        {
            if let Some((_, reply)) = self.queue.pop_front() {
                let _ = reply.send(Err(SttError::Overloaded));
            }
        }
    }
}

pub enum WorkerMsg {
    /// Wait for the worker's hello (the model loads).
    Boot,
    Job(SttJob, Reply),
}

pub struct WorkerArgs {
    t: Arc<Transcription>,
    actors: Arc<ActorRegistry>,
    supervisor: ActorRef<SupervisorMsg>,
    index: usize,
    restarts: u32,
    last_failure: Option<String>,
}

pub struct SttWorker;

pub struct WorkerState {
    t: Arc<Transcription>,
    supervisor: ActorRef<SupervisorMsg>,
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    frames: FrameReader,
    next_id: u64,
    buf: Vec<u8>,
    /// Read buffer of the worker's stdout.
    chunk: Vec<u8>,
    reg: Registration,
}

impl Actor for SttWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cfg = &args.t.config.embedded;
        let mut child = Command::new(&cfg.worker)
            .arg("--model")
            .arg(&cfg.model)
            .arg("--threads")
            .arg("1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let why = format!(
                    "cannot start the speech worker {}: {e}",
                    cfg.worker.display()
                );
                args.t.set_embedded_failure(Some(why.clone()));
                why
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the speech worker has no pipes".into());
        };
        if let Some(stderr) = child.stderr.take() {
            let index = args.index;
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(worker = index, "hearth-stt: {line}");
                }
            });
        }
        let reg = args.actors.register(
            ActorSpec::new(
                myself.get_id(),
                ActorKind::SttWorker,
                format!(
                    "stt-worker-{} (pid {})",
                    args.index,
                    child.id().unwrap_or(0)
                ),
            )
            .parent(args.supervisor.get_id())
            .restarted(args.restarts, args.last_failure),
        );
        myself.send_message(WorkerMsg::Boot)?;
        Ok(WorkerState {
            t: args.t,
            supervisor: args.supervisor,
            child,
            stdin,
            stdout,
            frames: FrameReader::new(),
            next_id: 1,
            buf: Vec::new(),
            chunk: Vec::new(),
            reg,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.child.start_kill();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        match msg {
            WorkerMsg::Boot => {
                let msg = tokio::time::timeout(Duration::from_secs(60), state.read_message())
                    .await
                    .map_err(|_| {
                        "the speech worker did not load its model within 60 s".to_owned()
                    })?;
                match msg {
                    Ok(SttMessage::Hello { model }) => {
                        tracing::info!(%model, "speech worker ready");
                        let _ = state
                            .supervisor
                            .send_message(SupervisorMsg::Ready(myself.get_id()));
                    }
                    Ok(SttMessage::Failure { message, .. }) => {
                        state.t.set_embedded_failure(Some(message.clone()));
                        return Err(format!("the speech worker cannot start: {message}").into());
                    }
                    Ok(_) => return Err("the speech worker did not say hello".into()),
                    Err(e) => {
                        let why = format!("the speech worker failed to start: {e}");
                        state.t.set_embedded_failure(Some(why.clone()));
                        return Err(why.into());
                    }
                }
            }
            WorkerMsg::Job(job, reply) => {
                if job.deadline <= Instant::now() {
                    let _ = reply.send(Err(SttError::Overloaded));
                    let _ = state
                        .supervisor
                        .send_message(SupervisorMsg::Idle(myself.get_id()));
                    return Ok(());
                }
                let id = state.next_id;
                state.next_id += 1;
                let samples = job.audio.len();
                state.buf.clear();
                stt_wire::encode(
                    &SttMessage::Request {
                        id,
                        interim: job.interim,
                        language: job.language.primary().to_owned(),
                        samples: job.audio.to_vec(),
                    },
                    &mut state.buf,
                );
                let timeout = state.t.config.embedded.decode_timeout;
                let started = Instant::now();
                let outcome = tokio::time::timeout(timeout, async {
                    state
                        .stdin
                        .write_all(&state.buf)
                        .await
                        .map_err(|e| e.to_string())?;
                    state.stdin.flush().await.map_err(|e| e.to_string())?;
                    loop {
                        match state.read_message().await? {
                            SttMessage::Result {
                                id: rid,
                                decode_us,
                                text,
                            } if rid == id => {
                                return Ok(Ok(SttOutput {
                                    text,
                                    decode: Duration::from_micros(decode_us as u64),
                                }));
                            }
                            SttMessage::Failure { id: rid, message } if rid == id => {
                                return Ok(Err(message));
                            }
                            SttMessage::Failure { id: 0, message } => return Err(message),
                            _ => continue,
                        }
                    }
                })
                .await;
                match outcome {
                    Ok(Ok(Ok(out))) => {
                        state.t.stats.record(samples, job.interim, &out);
                        let _ = reply.send(Ok(out));
                    }
                    Ok(Ok(Err(message))) => {
                        // The worker is fine; this utterance was not.
                        state.t.stats.engine_errors.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Err(SttError::Engine(message)));
                    }
                    Ok(Err(broken)) => {
                        state.t.stats.engine_errors.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Err(SttError::Engine(broken.clone())));
                        return Err(format!("speech worker broke: {broken}").into());
                    }
                    Err(_) => {
                        state.t.stats.engine_errors.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Err(SttError::Engine("decode timed out".into())));
                        return Err(format!(
                            "speech worker hung: no result after {:?}",
                            started.elapsed()
                        )
                        .into());
                    }
                }
                let _ = state
                    .supervisor
                    .send_message(SupervisorMsg::Idle(myself.get_id()));
            }
        }
        Ok(())
    }
}

impl WorkerState {
    /// The next whole message from the worker's stdout.
    async fn read_message(&mut self) -> Result<SttMessage, String> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(16 * 1024, 0);
        let result = self.read_into(&mut chunk).await;
        self.chunk = chunk;
        result
    }

    async fn read_into(&mut self, chunk: &mut [u8]) -> Result<SttMessage, String> {
        loop {
            match self.frames.poll_message() {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(e) => return Err(format!("garbage from the worker: {e}")),
            }
            let n = self
                .stdout
                .read(chunk)
                .await
                .map_err(|e| format!("reading from the worker: {e}"))?;
            if n == 0 {
                let status = self.child.try_wait().ok().flatten();
                return Err(match status {
                    Some(s) => format!("the worker exited ({s})"),
                    None => "the worker closed its output".into(),
                });
            }
            self.frames.handle_bytes(&chunk[..n]);
        }
    }
}
