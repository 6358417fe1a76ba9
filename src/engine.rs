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

use crate::backend::Tensor;
use crate::error::{Error, Result};
use crate::generate::{
    Decoding, DraftStats, Event, FinishReason, GenerateParams, Generation, prefill_pieces,
    routes_of,
};
use crate::model::{BatchEntry, ForwardOptions, ForwardOutput, Model, Sequence};
use crate::sampling::Sampler;
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
    /// Drafting with the MTP step (`GenerateParams::speculative`).
    spec: Option<Speculation>,
    /// This step's rows when speculating: the token fed, then the drafts.
    verify: Vec<u32>,
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
        let spec = match params.speculative {
            0 => None,
            k => Some(Speculation::new(model, k)?),
        };
        Ok(Running {
            spec,
            verify: Vec::new(),
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

    /// One forward pass over every running request, then each one's tokens.
    fn step(&mut self) {
        let model = self.model.clone();
        let now = Instant::now();
        let mut opts = ForwardOptions::default();
        // Drafts first: each speculating request's MTP step proposes its next tokens, which
        // this pass verifies as decode rows after the token it feeds.
        let mut failed = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            if r.pieces.is_empty()
                && r.started
                && let Some(spec) = r.spec.as_mut()
            {
                let room = r.dec.tokens_left().min(r.dec.positions_left(r.seq.pos));
                match spec.draft(&model, room.saturating_sub(1), r.dec.sampler()) {
                    Ok(drafts) => {
                        r.verify.clear();
                        r.verify.push(r.feed[0]);
                        r.verify.extend(drafts);
                    }
                    Err(e) => failed.push((i, e)),
                }
            }
        }
        for (i, e) in failed.into_iter().rev() {
            let r = self.running.remove(i);
            let _ = r.updates.send(Update::Done(Err(e)));
        }
        let mut entries = Vec::with_capacity(self.running.len());
        // (index in `running`, rows fed, the prompt piece fed if any, whether the step samples).
        let mut plan = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter_mut().enumerate() {
            opts.routing |= r.dec.forward_options().routing;
            opts.final_hidden |= r.spec.is_some();
            if !r.started {
                r.since = now;
                r.started = true;
            }
            let (ids, decode, piece, samples) = match r.pieces.pop_front() {
                Some(p) => (&r.prompt[p.clone()], false, Some(p), r.pieces.is_empty()),
                None => {
                    r.since = now;
                    let ids = if r.spec.is_some() {
                        &r.verify[..]
                    } else {
                        &r.feed[..]
                    };
                    (ids, true, None, true)
                }
            };
            plan.push((i, ids.len(), piece, samples));
            entries.push(BatchEntry {
                seq: &mut r.seq,
                ids,
                decode,
                all_logits: decode && r.spec.is_some(),
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
        for ((i, rows, piece, samples), out) in plan.into_iter().zip(outs) {
            let r = &mut self.running[i];
            let outcome = if let Some(p) = piece {
                r.prefilled(&model, p, samples, rows, out)
            } else if r.spec.is_some() {
                r.verified(&model, out)
            } else {
                r.decoded(&model, rows, out)
            };
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

impl Running {
    /// After a prompt piece: the MTP step reads the piece's rows whose next token is known, and
    /// the last piece samples the first token.
    fn prefilled(
        &mut self,
        model: &Model,
        piece: Range<usize>,
        samples: bool,
        rows: usize,
        out: ForwardOutput,
    ) -> Result<Option<FinishReason>> {
        if let Some(spec) = self.spec.as_mut() {
            let h = out
                .final_hidden
                .as_ref()
                .ok_or_else(|| Error::Invalid("the pass kept no hidden states".into()))?;
            spec.read_prompt(model, &self.prompt, piece, h)?;
        }
        if !samples {
            return Ok(None);
        }
        self.decoded(model, rows, out)
    }

    /// After a plain decode step or the last prompt piece: one token from the last row.
    fn decoded(
        &mut self,
        model: &Model,
        rows: usize,
        out: ForwardOutput,
    ) -> Result<Option<FinishReason>> {
        if !self.dec.wants_more() {
            return Ok(Some(FinishReason::Length));
        }
        let id = self.dec.pick(model, &out.logits)?;
        let ms = self.since.elapsed().as_secs_f64() * 1000.0;
        let routing = self
            .dec
            .forward_options()
            .routing
            .then(|| routes_of(&out.routing, rows - 1));
        self.feed = [id];
        if let Some(spec) = self.spec.as_mut() {
            spec.pending_ids = vec![id];
        }
        let updates = &self.updates;
        self.dec.accept(id, ms, routing, self.seq.pos, &mut |e| {
            updates.send(Update::Event(e.clone())).is_ok()
        })
    }

    /// After a verify step (the fed token and the drafts, as decode rows): the drafts that
    /// agree with the model are kept, then the model's own next token; the rest are rolled
    /// back, from the model's state and from the MTP step's.
    fn verified(&mut self, model: &Model, out: ForwardOutput) -> Result<Option<FinishReason>> {
        let spec = self.spec.as_mut().expect("a speculating request");
        let drafts = &self.verify[1..];
        let fed_at = self.seq.pos - self.verify.len();
        let sampler = self.dec.sampler();
        // The tokens this step yields: the drafts accepted, then one more.
        let (targets, agree) = if sampler.params().is_greedy() {
            // The model's own choice after each row; drafts count while they agree with it.
            let targets = model.backend.argmax(&out.logits)?;
            let agree = drafts
                .iter()
                .zip(&targets)
                .take_while(|(d, t)| d == t)
                .count();
            (targets[..=agree].to_vec(), agree)
        } else {
            // Speculative sampling: each draft kept with probability min(1, p/q), the first
            // one refused replaced by a draw from the residual, a bonus draw when all pass;
            // every token is then distributed as the model's own sampling would give it.
            let logits = model.backend.download(&out.logits)?;
            let v = model.config.vocab_size;
            let mut tokens = Vec::with_capacity(drafts.len() + 1);
            let mut agree = 0;
            for (i, (&d, q)) in drafts.iter().zip(&spec.q).enumerate() {
                let p = sampler.distribution(&logits[i * v..(i + 1) * v]);
                match sampler.accept_draft(d, &p, q) {
                    Ok(d) => {
                        tokens.push(d);
                        agree += 1;
                    }
                    Err(t) => {
                        tokens.push(t);
                        break;
                    }
                }
            }
            if agree == drafts.len() {
                let p = sampler.distribution(&logits[agree * v..(agree + 1) * v]);
                tokens.push(sampler.draw(&p));
            }
            (tokens, agree)
        };
        spec.record(drafts.len(), agree);
        let step_ms = self.since.elapsed().as_secs_f64() * 1000.0;
        let routing_on = self.dec.forward_options().routing;
        let mut emitted = 0;
        let mut reason = None;
        for (row, &id) in targets.iter().enumerate() {
            if !self.dec.wants_more() {
                reason = Some(FinishReason::Length);
                break;
            }
            let routing = routing_on.then(|| routes_of(&out.routing, row));
            let updates = &self.updates;
            // The step's time spread over its tokens, so tokens per second stay true.
            let ms = step_ms / targets.len() as f64;
            emitted += 1;
            self.feed = [id];
            let r = self
                .dec
                .accept(id, ms, routing, fed_at + row + 1, &mut |e| {
                    updates.send(Update::Event(e.clone())).is_ok()
                })?;
            if r.is_some() {
                reason = r;
                break;
            }
        }
        if reason.is_some() {
            return Ok(reason);
        }
        // The model keeps the fed token and the drafts it agreed with up to the last emitted.
        let keep = fed_at + emitted;
        model.rollback(&mut self.seq, keep)?;
        let h = out
            .final_hidden
            .as_ref()
            .ok_or_else(|| Error::Invalid("the pass kept no hidden states".into()))?;
        spec.verified(model, self.verify.len() - 1, &targets[..emitted], h)?;
        Ok(None)
    }
}

/// A request drafting with the model's MTP step: `k` tokens per step, verified in one pass.
struct Speculation {
    k: usize,
    /// The MTP step's own state (its attention layer's KV cache).
    mtp: Sequence,
    /// Rows not yet read by the MTP step: the tokens t+1 and the main model's `h_t`.
    pending_ids: Vec<u32>,
    pending_h: Option<Tensor>,
    /// Per draft position: drafts proposed and accepted.
    drafted: Vec<usize>,
    accepted: Vec<usize>,
    /// When sampling: the distribution each of this step's drafts was drawn from.
    q: Vec<Vec<f64>>,
}

impl Speculation {
    fn new(model: &Model, k: usize) -> Result<Speculation> {
        Ok(Speculation {
            k,
            mtp: model.new_mtp_sequence()?,
            pending_ids: Vec::new(),
            pending_h: None,
            drafted: vec![0; k],
            accepted: vec![0; k],
            q: Vec::new(),
        })
    }

    /// The MTP step reads the rows of a prompt piece `piece` (`h`: their `norm_f` outputs)
    /// whose next token is in the prompt; the prompt's last row waits for the first sampled
    /// token.
    fn read_prompt(
        &mut self,
        model: &Model,
        prompt: &[u32],
        piece: Range<usize>,
        h: &Tensor,
    ) -> Result<()> {
        let be = model.backend.as_ref();
        let known = piece.end.min(prompt.len() - 1).saturating_sub(piece.start);
        if known > 0 {
            let hk = be.gather_rows(&[(h, 0..known)])?;
            let ids = &prompt[piece.start + 1..piece.start + 1 + known];
            model.mtp_step(&mut self.mtp, ids, &hk, (false, false))?;
        }
        if piece.end == prompt.len() {
            let last = piece.len() - 1;
            self.pending_h = Some(be.gather_rows(&[(h, last..last + 1)])?);
        }
        Ok(())
    }

    /// Up to `room` drafts (at most `k`): the MTP step reads the pending rows, whose last
    /// output drafts the first token; each further draft feeds the previous one and the step's
    /// own output. Greedy requests draft the arg max; sampling ones draw each draft from the
    /// request's sampling distribution over the draft logits, kept for the acceptance test.
    /// The drafted positions are cut from the MTP state afterwards ([`Self::verified`]).
    fn draft(&mut self, model: &Model, room: usize, sampler: &mut Sampler) -> Result<Vec<u32>> {
        let n = self.k.min(room);
        let h = self
            .pending_h
            .take()
            .ok_or_else(|| Error::Invalid("no hidden state to draft from".into()))?;
        let be = model.backend.as_ref();
        let greedy = sampler.params().is_greedy();
        self.q.clear();
        let mut drafts = Vec::with_capacity(n);
        // Drafting rows are decode rows, as the verify rows are.
        let mut s = model.mtp_step(&mut self.mtp, &self.pending_ids, &h, (false, true))?;
        while drafts.len() < n {
            let d = if greedy {
                *be.argmax(&s.logits)?.last().expect("one row")
            } else {
                let q = sampler.distribution(&be.download(&s.logits)?);
                let d = sampler.draw(&q);
                self.q.push(q);
                d
            };
            drafts.push(d);
            if drafts.len() < n {
                s = model.mtp_step(&mut self.mtp, &[d], &s.out, (false, true))?;
            }
        }
        Ok(drafts)
    }

    /// After verifying `drafts` drafts: the MTP positions of the recursive drafts (all but
    /// the first, which came from the pending rows) are dropped, and the accepted tokens with
    /// the main model's `h` of their rows become the next pending rows.
    fn verified(&mut self, model: &Model, drafts: usize, tokens: &[u32], h: &Tensor) -> Result<()> {
        let keep = self.mtp.pos - drafts.saturating_sub(1);
        model.mtp_truncate(&mut self.mtp, keep)?;
        self.pending_ids = tokens.to_vec();
        self.pending_h = Some(model.backend.gather_rows(&[(h, 0..tokens.len())])?);
        Ok(())
    }

    fn record(&mut self, drafted: usize, agreed: usize) {
        for i in 0..drafted {
            self.drafted[i] += 1;
            if i < agreed {
                self.accepted[i] += 1;
            }
        }
    }
}

/// Ends a request: its last events and its result.
fn finish(r: Running, reason: FinishReason) {
    let updates = r.updates;
    let mut result = r.dec.finish(reason, &mut |e| {
        updates.send(Update::Event(e.clone())).is_ok()
    });
    if let (Ok(g), Some(spec)) = (result.as_mut(), r.spec) {
        g.drafts = Some(DraftStats {
            drafted: spec.drafted,
            accepted: spec.accepted,
        });
    }
    let _ = updates.send(Update::Done(result));
}
