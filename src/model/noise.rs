//! The random streams of a training step. Every dropout mask and the Gumbel noise are
//! drawn from the step's seed, each site from its own stream, so that the backward pass
//! redraws the forward's masks instead of storing them. Evaluation has no seed, no noise.

use super::batch::Mode;
use super::config::BertConfig;
use super::encoder::LayerDropout;
use crate::rng::mix64;

const SITE_EMB: u64 = 0x100;
const SITE_LAYER: u64 = 0x200;
const SITE_HEAD: u64 = 0x300;
const SITE_GUMBEL: u64 = 0x400;

/// The seed of a pass (`None`: evaluation).
#[derive(Clone, Copy, Debug)]
pub struct Noise {
    seed: Option<u64>,
}

impl Noise {
    pub fn of(mode: Mode) -> Noise {
        let seed = match mode {
            Mode::Train { seed } => Some(seed),
            Mode::Eval => None,
        };
        Noise { seed }
    }

    fn stream(self, site: u64) -> Option<u64> {
        self.seed.map(|s| mix64(s ^ mix64(site)))
    }

    /// The embeddings' dropout.
    pub fn embeddings(self) -> Option<u64> {
        self.stream(SITE_EMB)
    }

    /// The dropouts of transformer layer `l` (0-based; the combiner's layer block uses
    /// the replaced layer's).
    pub fn layer(self, l: usize, bert: &BertConfig) -> Option<LayerDropout> {
        self.stream(SITE_LAYER + l as u64).map(|s| LayerDropout {
            hidden_p: bert.hidden_dropout_prob,
            attn_p: bert.attention_probs_dropout_prob,
            seed: s,
        })
    }

    /// The dropout before the classifier.
    pub fn head(self) -> Option<u64> {
        self.stream(SITE_HEAD)
    }

    /// The combiner's Gumbel noise.
    pub fn gumbel(self) -> Option<u64> {
        self.stream(SITE_GUMBEL)
    }
}
