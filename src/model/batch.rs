//! What a forward pass reads: a padded batch, and the mode (training draws dropout and
//! Gumbel noise from a seed).

/// A padded batch of token sequences.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[batch, seq]` token ids, padded with the pad id.
    pub ids: Vec<u32>,
    /// `[batch, seq]` token type ids (all 0 for single-text classification).
    pub type_ids: Vec<u32>,
    /// Real (non-padding) length of each example, `[CLS]` and `[SEP]` included.
    pub lengths: Vec<usize>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Pads `seqs` to the longest one with `pad_id`.
    pub fn from_sequences(seqs: &[&[u32]], pad_id: u32) -> Batch {
        let batch = seqs.len();
        let seq = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; batch * seq];
        for (b, s) in seqs.iter().enumerate() {
            ids[b * seq..b * seq + s.len()].copy_from_slice(s);
        }
        Batch {
            ids,
            type_ids: vec![0; batch * seq],
            lengths: seqs.iter().map(|s| s.len()).collect(),
            batch,
            seq,
        }
    }
}

/// Training mode turns on dropout and Gumbel noise, all drawn from `seed`.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Train { seed: u64 },
    Eval,
}
