//! The built-in default job's data: a synthetic document-classification corpus in which a
//! few class-bearing words sit among many filler words, the situation pruning is made
//! for (most tokens are noise; a few decide the class).

use crate::rng::Rng;

pub const CLASSES: [&str; 4] = ["astronomy", "cooking", "finance", "football"];

const CLASS_WORDS: [[&str; 12]; 4] = [
    [
        "galaxy",
        "nebula",
        "telescope",
        "orbit",
        "comet",
        "planet",
        "asteroid",
        "quasar",
        "eclipse",
        "satellite",
        "cosmos",
        "meteor",
    ],
    [
        "recipe", "oven", "simmer", "saucepan", "garlic", "knead", "roast", "whisk", "flour",
        "skillet", "marinade", "broth",
    ],
    [
        "dividend",
        "equity",
        "bond",
        "inflation",
        "portfolio",
        "interest",
        "ledger",
        "audit",
        "revenue",
        "shares",
        "hedge",
        "credit",
    ],
    [
        "goal", "striker", "referee", "penalty", "midfield", "league", "keeper", "offside",
        "tackle", "stadium", "corner", "derby",
    ],
];

/// One labelled synthetic document.
#[derive(Clone, Debug)]
pub struct SyntheticDoc {
    pub text: String,
    pub label: usize,
}

/// Settings of the generator.
#[derive(Clone, Debug)]
pub struct CorpusSpec {
    pub filler_vocab: usize,
    pub min_words: usize,
    pub max_words: usize,
    /// Class words per document (from its own class).
    pub signal_words: usize,
    /// Words from other classes per document (distractors, fewer than the signal).
    pub distractor_words: usize,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        CorpusSpec {
            filler_vocab: 1500,
            min_words: 120,
            max_words: 300,
            signal_words: 5,
            distractor_words: 2,
        }
    }
}

/// Pronounceable filler words ("bakemo", "tisul", ...), deterministic.
pub fn filler_words(count: usize) -> Vec<String> {
    const CONS: &[u8] = b"bdfgklmnprstvz";
    const VOW: &[u8] = b"aeiou";
    let mut out = Vec::with_capacity(count);
    let mut i = 0usize;
    while out.len() < count {
        let mut w = String::new();
        let mut x = i;
        let syllables = 2 + (i % 2);
        for _ in 0..syllables {
            w.push(CONS[x % CONS.len()] as char);
            x /= CONS.len();
            w.push(VOW[x % VOW.len()] as char);
            x /= VOW.len();
        }
        if !out.contains(&w) {
            out.push(w);
        }
        i += 1;
    }
    out
}

/// The whole vocabulary: filler words then all class words.
pub fn vocabulary(spec: &CorpusSpec) -> Vec<String> {
    let mut v = filler_words(spec.filler_vocab);
    for class in CLASS_WORDS {
        v.extend(class.iter().map(|w| w.to_string()));
    }
    v
}

/// Generates `count` documents with balanced classes from `seed`.
pub fn generate(spec: &CorpusSpec, count: usize, seed: u64) -> Vec<SyntheticDoc> {
    let filler = filler_words(spec.filler_vocab);
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let label = i % CLASSES.len();
            let len = spec.min_words + rng.below(spec.max_words - spec.min_words + 1);
            // Zipf-like filler: low indices are frequent, as in real text.
            let mut words: Vec<&str> = (0..len)
                .map(|_| {
                    let u = rng.uniform();
                    let idx = ((filler.len() as f64).powf(u) - 1.0) as usize;
                    filler[idx.min(filler.len() - 1)].as_str()
                })
                .collect();
            let mut place = |w: &'static str, rng: &mut Rng| {
                let pos = rng.below(words.len());
                words[pos] = w;
            };
            for _ in 0..spec.signal_words {
                let w = CLASS_WORDS[label][rng.below(12)];
                place(w, &mut rng);
            }
            for _ in 0..spec.distractor_words {
                let other = (label + 1 + rng.below(CLASSES.len() - 1)) % CLASSES.len();
                let w = CLASS_WORDS[other][rng.below(12)];
                place(w, &mut rng);
            }
            SyntheticDoc {
                text: words.join(" "),
                label,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_balanced_and_carries_signal() {
        let spec = CorpusSpec::default();
        let a = generate(&spec, 40, 9);
        let b = generate(&spec, 40, 9);
        assert_eq!(
            a.iter().map(|d| &d.text).collect::<Vec<_>>(),
            b.iter().map(|d| &d.text).collect::<Vec<_>>()
        );
        for c in 0..CLASSES.len() {
            assert_eq!(a.iter().filter(|d| d.label == c).count(), 10);
        }
        let vocab = vocabulary(&spec);
        for d in &a {
            let n = d.text.split(' ').count();
            assert!((spec.min_words..=spec.max_words).contains(&n));
            assert!(d.text.split(' ').all(|w| vocab.iter().any(|v| v == w)));
            // The document's own class words outnumber any other class's.
            let count = |c: usize| {
                d.text
                    .split(' ')
                    .filter(|w| CLASS_WORDS[c].contains(w))
                    .count()
            };
            let own = count(d.label);
            assert!(own >= 1);
            for c in 0..CLASSES.len() {
                if c != d.label {
                    assert!(count(c) <= spec.distractor_words);
                }
            }
        }
    }
}
