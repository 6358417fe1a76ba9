//! The engine: one thread owns the model and runs every sequence submitted to it, batched.
//! Each step is one forward pass carrying a decode row of every sequence that is generating and
//! the next prefill piece of every sequence still reading its prompt, so a new sequence joins
//! the running batch, a finished or cancelled one leaves it, and a long prompt is read in
//! pieces between decode steps. Every sequence's events are those [`generate`] sends for it
//! alone, and its tokens the same: a row's result does not depend on the batch
//! ([`Model::forward_batch`]).
//!
//! [`generate`]: crate::generate::generate

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::{
    Decoding, Event, FinishReason, GenerateParams, Generation, prefill_pieces, routes_of,
};
use crate::model::{BatchEntry, ForwardOptions, Model, Sequence};
use crate::tokenizer::Tokenizer;

/// What a request's receiver gets: its events in order, then its result.
#[derive(Debug)]
pub enum Update {
    Event(Event),
    Done(Result<Generation>),
}

/// A submitted request: its id (for [`Engine::cancel`]) and its updates.
pub struct Ticket {
    pub id: u64,
    pub updates: mpsc::Receiver<Update>,
}

impl Ticket {
    /// Waits for the end, handing every event to `on_event`; the result of the request.
    pub fn wait(self, on_event: &mut dyn FnMut(&Event)) -> Result<Generation> {
        for u in self.updates.iter() {
            match u {
                Update::Event(e) => on_event(&e),
                Update::Done(r) => return r,
            }
        }
        Err(Error::Invalid(
            "the engine stopped before the request finished".into(),
        ))
    }
}

struct Submission {
    id: u64,
    prompt: Vec<u32>,
    params: GenerateParams,
    updates: mpsc::Sender<Update>,
}

enum Command {
    Submit(Vec<Submission>),
    Cancel(u64),
}

/// The model on its own thread, running whatever is submitted.
pub struct Engine {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    next_id: AtomicU64,
}

impl Engine {
    /// Starts the engine's thread with `model` (and the tokenizer that streams text and finds
    /// stop strings, when there is one).
    pub fn start(model: Arc<Model>, tokenizer: Option<Arc<Tokenizer>>) -> Engine {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("nemotron-engine".into())
            .spawn(move || Scheduler::new(model, tokenizer).run(rx))
            .expect("spawning the engine thread");
        Engine {
            commands: Some(tx),
            thread: Some(thread),
            next_id: AtomicU64::new(1),
        }
    }

    /// Queues a generation from `prompt` on a new sequence; it joins the running batch at the
    /// next step. A request the engine cannot run (an empty prompt, one over the context, bad
    /// sampling parameters) gets its error as its only update.
    pub fn submit(&self, prompt: Vec<u32>, params: GenerateParams) -> Ticket {
        self.submit_all(vec![(prompt, params)])
            .pop()
            .expect("one ticket per request")
    }

    /// Queues several generations at once: they join the running batch at the same step (so
    /// that, for instance, a benchmark's sequences prefill and decode in the same passes).
    pub fn submit_all(&self, requests: Vec<(Vec<u32>, GenerateParams)>) -> Vec<Ticket> {
        let mut tickets = Vec::with_capacity(requests.len());
        let mut batch = Vec::with_capacity(requests.len());
        for (prompt, params) in requests {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel();
            batch.push(Submission {
                id,
                prompt,
                params,
                updates: tx,
            });
            tickets.push(Ticket { id, updates: rx });
        }
        if let Err(cmd) = self.send(Command::Submit(batch)) {
            let Command::Submit(batch) = cmd else {
                unreachable!("the command sent was a submission")
            };
            for s in batch {
                let _ = s.updates.send(Update::Done(Err(Error::Invalid(
                    "the engine has stopped".into(),
                ))));
            }
        }
        tickets
    }

    /// Stops request `id`: it finishes with [`FinishReason::Cancelled`] and leaves the batch.
    /// Unknown or finished ids are ignored.
    pub fn cancel(&self, id: u64) {
        let _ = self.send(Command::Cancel(id));
    }

    /// The command back where the engine has stopped.
    fn send(&self, cmd: Command) -> std::result::Result<(), Command> {
        match &self.commands {
            Some(c) => c.send(cmd).map_err(|e| e.0),
            None => Err(cmd),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the running requests are cancelled.
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request in the batch.
struct Running {
    id: u64,
    seq: Sequence,
    dec: Decoding,
    prompt: Vec<u32>,
    /// Prompt pieces not read yet (the same pieces `generate` reads a prompt in).
    pieces: VecDeque<Range<usize>>,
    /// The token to feed at the next step, once the prompt is in.
    feed: [u32; 1],
    updates: mpsc::Sender<Update>,
    /// When the current step (or, for the first token, the prompt) began.
    since: Instant,
    started: bool,
    /// Bytes of KV cache and state this request may come to hold (its whole context).
    reserved: u64,
}

struct Scheduler {
    model: Arc<Model>,
    tokenizer: Option<Arc<Tokenizer>>,
    running: Vec<Running>,
}

impl Scheduler {
    fn new(model: Arc<Model>, tokenizer: Option<Arc<Tokenizer>>) -> Scheduler {
        Scheduler {
            model,
            tokenizer,
            running: Vec::new(),
        }
    }

    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            if self.running.is_empty() {
                match commands.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        for r in std::mem::take(&mut self.running) {
                            finish(r, FinishReason::Cancelled);
                        }
                        return;
                    }
                }
            }
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn handle(&mut self, c: Command) {
        match c {
            Command::Submit(batch) => {
                for s in batch {
                    match self.admit(s.id, s.prompt, &s.params, s.updates.clone()) {
                        Ok(r) => self.running.push(r),
                        Err(e) => {
                            let _ = s.updates.send(Update::Done(Err(e)));
                        }
                    }
                }
            }
            Command::Cancel(id) => {
                if let Some(i) = self.running.iter().position(|r| r.id == id) {
                    finish(self.running.remove(i), FinishReason::Cancelled);
                }
            }
        }
    }

    fn admit(
        &self,
        id: u64,
        prompt: Vec<u32>,
        params: &GenerateParams,
        updates: mpsc::Sender<Update>,
    ) -> Result<Running> {
        let model = &self.model;
        let dec = Decoding::new(model, 0, self.tokenizer.as_ref(), prompt.len(), params)?;
        let v = model.config.vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= v) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary (vocab_size {v})"
            )));
        }
        let reserved = self.reserve(&prompt, params)?;
        Ok(Running {
            id,
            reserved,
            seq: model.new_sequence()?,
            dec,
            pieces: prefill_pieces(prompt.len(), params.prefill_chunk).into(),
            prompt,
            feed: [0],
            updates,
            since: Instant::now(),
            started: false,
        })
    }

    /// The memory a request may come to need (its state, and KV for every position it may
    /// reach), checked against what the machine has left once the running requests' KV caches
    /// have grown to their own reservations: a request that would not fit is refused up front,
    /// naming both numbers, rather than failing the batch halfway.
    fn reserve(&self, prompt: &[u32], params: &GenerateParams) -> Result<u64> {
        let sizes = &self.model.config.sizes;
        let context = params
            .max_context
            .unwrap_or(self.model.config.max_position_embeddings);
        let positions = (prompt.len() as u64)
            .saturating_add(params.max_tokens as u64)
            .min(context as u64);
        let need = sizes
            .kv_bytes_per_token
            .saturating_mul(positions)
            .saturating_add(sizes.state_bytes_per_sequence);
        let held = |r: &Running| {
            sizes
                .kv_bytes_per_token
                .saturating_mul(r.seq.pos as u64)
                .saturating_add(sizes.state_bytes_per_sequence)
        };
        let promised: u64 = self
            .running
            .iter()
            .map(|r| r.reserved.saturating_sub(held(r)))
            .sum();
        if let Some(free) = self.model.backend.memory_headroom() {
            let left = free.saturating_sub(promised);
            if need > left {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                return Err(Error::Invalid(format!(
                    "this request needs {:.2} GiB for its KV cache and state ({positions} \
                     positions), but only {:.2} GiB is available ({:.2} GiB free, {:.2} GiB \
                     promised to the {} running requests); lower max_tokens or the context",
                    gib(need),
                    gib(left),
                    gib(free),
                    gib(promised),
                    self.running.len()
                )));
            }
        }
        Ok(need)
    }

    /// One forward pass over every running request, then each one's token.
    fn step(&mut self) {
        let model = self.model.clone();
        let now = Instant::now();
        let mut opts = ForwardOptions::default();
        let mut entries = Vec::with_capacity(self.running.len());
        // (index in `running`, rows fed, whether the step ends the prompt or is a decode).
        let mut plan = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter_mut().enumerate() {
            opts.routing |= r.dec.forward_options().routing;
            if !r.started {
                r.since = now;
                r.started = true;
            }
            let (ids, decode, samples) = match r.pieces.pop_front() {
                Some(p) => (&r.prompt[p], false, r.pieces.is_empty()),
                None => {
                    r.since = now;
                    (&r.feed[..], true, true)
                }
            };
            plan.push((i, ids.len(), samples));
            entries.push(BatchEntry {
                seq: &mut r.seq,
                ids,
                decode,
                all_logits: false,
            });
        }
        let result = model.forward_batch(&mut entries, opts);
        drop(entries);
        let outs = match result {
            Ok(o) => o,
            Err(e) => {
                // A failed pass fails everything it carried; nothing is left half-run.
                let msg = e.to_string();
                for r in std::mem::take(&mut self.running) {
                    let _ = r.updates.send(Update::Done(Err(Error::Invalid(format!(
                        "the batched forward pass failed: {msg}"
                    )))));
                }
                return;
            }
        };
        let mut done = Vec::new();
        for ((i, rows, samples), out) in plan.into_iter().zip(outs) {
            if !samples {
                continue;
            }
            let r = &mut self.running[i];
            if !r.dec.wants_more() {
                done.push((i, Ok(FinishReason::Length)));
                continue;
            }
            let outcome = r.dec.pick(&model, &out.logits).and_then(|id| {
                let ms = r.since.elapsed().as_secs_f64() * 1000.0;
                let routing = r
                    .dec
                    .forward_options()
                    .routing
                    .then(|| routes_of(&out.routing, rows - 1));
                r.feed = [id];
                let updates = &r.updates;
                r.dec.accept(id, ms, routing, r.seq.pos, &mut |e| {
                    updates.send(Update::Event(e.clone())).is_ok()
                })
            });
            match outcome {
                Ok(Some(reason)) => done.push((i, Ok(reason))),
                Ok(None) => {}
                Err(e) => done.push((i, Err(e))),
            }
        }
        for (i, outcome) in done.into_iter().rev() {
            let r = self.running.remove(i);
            match outcome {
                Ok(reason) => finish(r, reason),
                Err(e) => {
                    let _ = r.updates.send(Update::Done(Err(e)));
                }
            }
        }
    }
}

/// Ends a request: its last events and its result.
fn finish(r: Running, reason: FinishReason) {
    let updates = r.updates;
    let result = r.dec.finish(reason, &mut |e| {
        updates.send(Update::Event(e.clone())).is_ok()
    });
    let _ = updates.send(Update::Done(result));
}
