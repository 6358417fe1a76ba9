//! Batches: several sequences, and several tokens of one sequence, in one forward pass. A row's
//! logits and routing must be bit for bit what the same sequence computes alone, whatever else
//! shares the pass, on every backend; and a multi-token verify step (decode rows) must compute
//! exactly what that many single-token decode steps compute. Run on the default model (its
//! held-out prompts from the goldens), so the routing is a trained router's.

use std::path::Path;

use nemotron_rt::backend::Backend;
use nemotron_rt::default_model;
use nemotron_rt::model::{BatchEntry, ForwardOptions, ForwardOutput, LoadOptions, Model, Sequence};

#[path = "support/golden.rs"]
mod golden_file;
#[path = "support/backends.rs"]
mod support_backends;
use golden_file::Golden;

/// Decode steps compared per sequence.
const STEPS: usize = 5;

fn prompts() -> Vec<Vec<u32>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/default_model");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    // Four domains, four lengths.
    [0usize, 2, 4, 6]
        .iter()
        .enumerate()
        .map(|(j, &p)| {
            let ids = golden.ids(&format!("p{p}.ids"));
            ids[..ids.len() - 3 * j].to_vec()
        })
        .collect()
}

/// What one row produced: its logits' bits and its routing (layer, ids, weight bits).
#[derive(Debug, PartialEq)]
struct Row {
    logits: Vec<u32>,
    routing: Vec<(usize, Vec<u32>, Vec<u32>)>,
}

fn rows_of(be: &dyn Backend, out: &ForwardOutput) -> Vec<Row> {
    let logits = be.download(&out.logits).unwrap();
    let v = out.logits.cols();
    let n = logits.len() / v;
    (0..n)
        .map(|r| Row {
            logits: logits[r * v..(r + 1) * v]
                .iter()
                .map(|x| x.to_bits())
                .collect(),
            // Routing covers every row of the entry; logits only the wanted ones (all here
            // where more than one row is compared).
            routing: out
                .routing
                .iter()
                .map(|l| {
                    let (ids, ws) = l.token(l.ids.len() / l.k - n + r);
                    (
                        l.layer,
                        ids.to_vec(),
                        ws.iter().map(|w| w.to_bits()).collect(),
                    )
                })
                .collect(),
        })
        .collect()
}

/// Panics naming the first difference between two runs of rows (a whole row would print
/// thousands of numbers).
fn same(got: &[Row], want: &[Row], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        if let Some(i) = (0..g.logits.len()).find(|&i| g.logits[i] != w.logits[i]) {
            panic!(
                "{what}: row {r}, logit {i} is {} instead of {}",
                f32::from_bits(g.logits[i]),
                f32::from_bits(w.logits[i])
            );
        }
        assert_eq!(g.routing, w.routing, "{what}: row {r}, routing");
    }
}

fn argmax(row: &Row) -> u32 {
    let vals: Vec<f32> = row.logits.iter().map(|&b| f32::from_bits(b)).collect();
    let mut best = 0;
    for (i, &x) in vals.iter().enumerate() {
        if x > vals[best] {
            best = i;
        }
    }
    best as u32
}

const OPTS: ForwardOptions = ForwardOptions {
    all_logits: false,
    routing: true,
    hidden: false,
    final_hidden: false,
};

/// One sequence alone: its prefill's last row, then `STEPS` greedy decode steps one token at a
/// time. Returns the rows and the tokens fed.
fn alone(model: &Model, prompt: &[u32]) -> (Vec<Row>, Vec<u32>) {
    let be = model.backend.as_ref();
    let mut seq = model.new_sequence().unwrap();
    let mut rows = rows_of(be, &model.forward(&mut seq, prompt, OPTS).unwrap());
    let mut fed = Vec::new();
    for _ in 0..STEPS {
        let next = argmax(rows.last().unwrap());
        fed.push(next);
        let out = model.forward(&mut seq, &[next], OPTS).unwrap();
        rows.extend(rows_of(be, &out));
    }
    (rows, fed)
}

fn entry<'a>(seq: &'a mut Sequence, ids: &'a [u32], decode: bool) -> BatchEntry<'a> {
    BatchEntry {
        seq,
        ids,
        decode,
        all_logits: decode,
    }
}

#[test]
fn rows_are_bit_identical_whatever_shares_the_pass() {
    let prompts = prompts();
    let dir = default_model::dir().unwrap();
    for (name, be) in support_backends::all() {
        let model = Model::load(&dir, be, LoadOptions::default()).unwrap();
        let be = model.backend.as_ref();
        let reference: Vec<(Vec<Row>, Vec<u32>)> =
            prompts.iter().map(|p| alone(&model, p)).collect();

        // All four prompts prefilled in one pass, then decoded together step by step.
        let mut seqs: Vec<Sequence> = prompts
            .iter()
            .map(|_| model.new_sequence().unwrap())
            .collect();
        let mut entries: Vec<BatchEntry> = seqs
            .iter_mut()
            .zip(&prompts)
            .map(|(s, p)| entry(s, p, false))
            .collect();
        let outs = model.forward_batch(&mut entries, OPTS).unwrap();
        drop(entries);
        for (j, out) in outs.iter().enumerate() {
            same(
                &rows_of(be, out),
                &reference[j].0[..1],
                &format!("{name}: prompt {j}'s prefill in a batch of four"),
            );
        }
        for step in 0..STEPS {
            let fed: Vec<[u32; 1]> = reference.iter().map(|r| [r.1[step]]).collect();
            // Batches of 4, then 3, 2, 1 sequences: the later ones drop out, the rest go on.
            let n = 4 - step.min(3);
            let mut entries: Vec<BatchEntry> = seqs
                .iter_mut()
                .zip(&fed)
                .take(n)
                .map(|(s, t)| entry(s, t, true))
                .collect();
            let outs = model.forward_batch(&mut entries, OPTS).unwrap();
            drop(entries);
            for (j, out) in outs.iter().enumerate() {
                same(
                    &rows_of(be, out),
                    &reference[j].0[step + 1..step + 2],
                    &format!("{name}: sequence {j}, decode step {step} in a batch of {n}"),
                );
            }
            // The sequences that left catch up alone, so every sequence stays in step.
            for j in n..4 {
                let out = model.forward(&mut seqs[j], &fed[j], OPTS).unwrap();
                same(
                    &rows_of(be, &out),
                    &reference[j].0[step + 1..step + 2],
                    "catching up alone",
                );
            }
        }

        // A verify step beside a prefill: sequence 0 takes its STEPS greedy tokens as decode
        // rows in one pass (what MTP verification does) while sequence 1 prefills.
        let mut a = model.new_sequence().unwrap();
        model.forward(&mut a, &prompts[0], OPTS).unwrap();
        let mut b = model.new_sequence().unwrap();
        let outs = model
            .forward_batch(
                &mut [
                    entry(&mut b, &prompts[1], false),
                    entry(&mut a, &reference[0].1, true),
                ],
                OPTS,
            )
            .unwrap();
        same(
            &rows_of(be, &outs[1]),
            &reference[0].0[1..],
            &format!("{name}: {STEPS} decode rows in one pass against {STEPS} decode steps"),
        );
        same(
            &rows_of(be, &outs[0]),
            &reference[1].0[..1],
            &format!("{name}: a prefill beside a verify step"),
        );
        assert_eq!(a.pos, prompts[0].len() + STEPS);
        assert_eq!(b.pos, prompts[1].len());
    }
}

fn state_bits(model: &Model, seq: &Sequence) -> Vec<(String, Vec<u32>)> {
    model
        .read_state(seq)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// After a verify step of five tokens and a rollback to two of them, the sequence is bit for
/// bit the one that only ever saw those two: the same conv and SSM states, and the same next
/// step (which reads the truncated KV caches).
#[test]
fn rollback_restores_exactly_the_state_without_the_removed_tokens() {
    let prompt = &prompts()[0];
    let dir = default_model::dir().unwrap();
    for (name, be) in support_backends::all() {
        let model = Model::load(&dir, be, LoadOptions::default()).unwrap();
        let be = model.backend.as_ref();
        let (reference, fed) = alone(&model, prompt);
        for keep in [0, 2, STEPS - 1] {
            let mut verified = model.new_sequence().unwrap();
            model.forward(&mut verified, prompt, OPTS).unwrap();
            let mut fed_rows = [entry(&mut verified, &fed, true)];
            model.forward_batch(&mut fed_rows, OPTS).unwrap();
            let target = prompt.len() + keep;
            model.rollback(&mut verified, target).unwrap();
            assert_eq!(verified.pos, target);

            let mut plain = model.new_sequence().unwrap();
            model.forward(&mut plain, prompt, OPTS).unwrap();
            for &t in &fed[..keep] {
                model.forward(&mut plain, &[t], OPTS).unwrap();
            }
            assert!(
                state_bits(&model, &verified) == state_bits(&model, &plain),
                "{name}: Mamba states after a rollback to {keep} of {STEPS} tokens"
            );
            // The next token: the same row from both, and the reference's.
            let next = [fed[keep]];
            let a = model.forward(&mut verified, &next, OPTS).unwrap();
            let b = model.forward(&mut plain, &next, OPTS).unwrap();
            let what = format!("{name}: the step after a rollback to {keep}");
            same(&rows_of(be, &a), &rows_of(be, &b), &what);
            same(&rows_of(be, &a), &reference[keep + 1..keep + 2], &what);
        }

        // Only inside the last multi-token step, and only once.
        let mut seq = model.new_sequence().unwrap();
        model.forward(&mut seq, prompt, OPTS).unwrap();
        let err = model.rollback(&mut seq, prompt.len() - 1).unwrap_err();
        assert!(
            err.to_string().contains("last multi-token decode step"),
            "{err}"
        );
        model
            .forward_batch(&mut [entry(&mut seq, &fed, true)], OPTS)
            .unwrap();
        assert!(model.rollback(&mut seq, prompt.len() - 1).is_err());
        assert!(model.rollback(&mut seq, prompt.len() + STEPS + 1).is_err());
        model.rollback(&mut seq, prompt.len() + 1).unwrap();
        assert!(model.rollback(&mut seq, prompt.len()).is_err());
    }
}
