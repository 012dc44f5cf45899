//! Text -> token ids: HF BERT tokenizers (`tokenizer.json`, or `vocab.txt` built into an
//! equivalent WordPiece tokenizer) and a word-level tokenizer for the synthetic demo corpus.
//!
//! Sequences are always `[CLS] tokens [SEP]`, truncated by us; padding is done by
//! `model::Batch`, so the tokenizer's own padding/truncation settings are switched off.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::{BertNormalizer, Lowercase};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// A tokenizer plus the ids of the special tokens we add ourselves.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    cls_id: u32,
    sep_id: u32,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("cls_id", &self.cls_id)
            .field("sep_id", &self.sep_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// The special-token settings of `tokenizer_config.json` that matter to us.
struct TokenizerConfig {
    do_lower_case: bool,
    strip_accents: Option<bool>,
    tokenize_chinese_chars: bool,
    unk: String,
    cls: String,
    sep: String,
    pad: String,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json` if present; HF's BertTokenizer defaults otherwise.
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let json: Value = if path.is_file() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", path.display()))?
        } else {
            Value::Object(Default::default())
        };
        let flag = |key: &str, default: bool| -> Result<bool> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => bail!(
                    "{}: field `{key}` = {other} is not a boolean",
                    path.display()
                ),
            }
        };
        // Special tokens are strings or AddedToken objects {"content": ...}.
        let token = |key: &str, default: &str| -> Result<String> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => Ok(s.clone()),
                    _ => bail!("{}: field `{key}` has no string `content`", path.display()),
                },
                Some(other) => bail!("{}: field `{key}` = {other} is not a token", path.display()),
            }
        };
        let strip_accents = match json.get("strip_accents") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => bail!(
                "{}: field `strip_accents` = {other} is not a boolean",
                path.display()
            ),
        };
        Ok(TokenizerConfig {
            do_lower_case: flag("do_lower_case", true)?,
            strip_accents,
            tokenize_chinese_chars: flag("tokenize_chinese_chars", true)?,
            unk: token("unk_token", "[UNK]")?,
            cls: token("cls_token", "[CLS]")?,
            sep: token("sep_token", "[SEP]")?,
            pad: token("pad_token", "[PAD]")?,
        })
    }
}

fn tok_err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
}

impl TextTokenizer {
    /// tokenizer.json if present; else vocab.txt (+ tokenizer_config.json `do_lower_case`, default true) building a
    /// BERT WordPiece tokenizer (BertNormalizer with lowercase/strip accents like HF BertTokenizerFast,
    /// BertPreTokenizer, WordPiece with `[UNK]`, `[CLS] X [SEP]` post-processing). Neither -> error naming the dir.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = TokenizerConfig::read(dir)?;
        let json_path = dir.join("tokenizer.json");
        let vocab_path = dir.join("vocab.txt");
        let mut tokenizer = if json_path.is_file() {
            Tokenizer::from_file(&json_path)
                .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", json_path.display()))?
        } else if vocab_path.is_file() {
            Self::wordpiece_from_vocab(&vocab_path, &config)?
        } else {
            bail!(
                "{}: no tokenizer found (expected tokenizer.json or vocab.txt)",
                dir.display()
            );
        };
        // We truncate and pad ourselves; the file's settings (e.g. Fixed(128)) would interfere.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", dir.display()))?;

        let source = if json_path.is_file() {
            &json_path
        } else {
            &vocab_path
        };
        let id_of = |token: &str, role: &str| -> Result<u32> {
            tokenizer.token_to_id(token).ok_or_else(|| {
                anyhow!(
                    "{}: the {role} token {token:?} is not in the vocabulary",
                    source.display()
                )
            })
        };
        let cls_id = id_of(&config.cls, "CLS")?;
        let sep_id = id_of(&config.sep, "SEP")?;
        let pad_id = id_of(&config.pad, "padding")?;
        Ok(TextTokenizer {
            tokenizer,
            cls_id,
            sep_id,
            pad_id,
        })
    }

    /// What HF `BertTokenizerFast` builds from a `vocab.txt` (transformers' BertConverter).
    fn wordpiece_from_vocab(vocab_path: &Path, config: &TokenizerConfig) -> Result<Tokenizer> {
        let vocab_str = vocab_path
            .to_str()
            .ok_or_else(|| anyhow!("{}: path is not valid UTF-8", vocab_path.display()))?;
        let model = WordPiece::from_file(vocab_str)
            .unk_token(config.unk.clone())
            .build()
            .map_err(|e| anyhow!("{}: cannot read vocabulary: {e}", vocab_path.display()))?;
        let mut tokenizer = Tokenizer::new(model);
        let id_of = |token: &str| -> Result<u32> {
            tokenizer.token_to_id(token).ok_or_else(|| {
                anyhow!(
                    "{}: token {token:?} is not in the vocabulary",
                    vocab_path.display()
                )
            })
        };
        let (cls_id, sep_id) = (id_of(&config.cls)?, id_of(&config.sep)?);
        id_of(&config.unk)?;
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(
                true,
                config.tokenize_chinese_chars,
                config.strip_accents,
                config.do_lower_case,
            )))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                (config.sep.clone(), sep_id),
                (config.cls.clone(), cls_id),
            )))
            .with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
        // Specials are matched before normalisation, as HF registers them as added tokens.
        let specials: Vec<AddedToken> =
            [&config.pad, &config.unk, &config.cls, &config.sep, "[MASK]"]
                .into_iter()
                .filter(|t| tokenizer.token_to_id(t).is_some())
                .map(|t| AddedToken::from(t.to_string(), true))
                .collect();
        tokenizer.add_special_tokens(&specials);
        Ok(tokenizer)
    }

    /// A word-level tokenizer for the synthetic demo corpus: specials `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3,
    /// then `words` in order; whitespace pre-tokenizer; optional lowercasing; adds `[CLS] ... [SEP]`.
    ///
    /// Text is split on whitespace only (punctuation stays attached), so the words must be
    /// exactly the whitespace-separated pieces of the corpus. With `lowercase`, text and words
    /// are lowercased. Empty words, words containing whitespace and duplicates (after
    /// lowercasing) are errors.
    pub fn word_level(words: &[String], lowercase: bool) -> Result<Self> {
        let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];
        let mut seen: HashSet<String> = specials.iter().map(|s| s.to_string()).collect();
        let mut vocab: Vec<(String, u32)> = specials
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i as u32))
            .collect();
        for (i, word) in words.iter().enumerate() {
            let w = if lowercase {
                word.to_lowercase()
            } else {
                word.clone()
            };
            if w.is_empty() || w.chars().any(char::is_whitespace) {
                bail!("word-level vocabulary: word {i} ({word:?}) is empty or contains whitespace");
            }
            if !seen.insert(w.clone()) {
                bail!(
                    "word-level vocabulary: word {i} ({word:?}) occurs twice or is a special token"
                );
            }
            vocab.push((w, (specials.len() + i) as u32));
        }
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("[UNK]".into())
            .build()
            .map_err(tok_err)?;
        let mut tokenizer = Tokenizer::new(model);
        if lowercase {
            tokenizer.with_normalizer(Some(Lowercase));
        }
        tokenizer
            .with_pre_tokenizer(Some(WhitespaceSplit))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), 3),
                ("[CLS]".into(), 2),
            )));
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        tokenizer.add_special_tokens(&added);
        Ok(TextTokenizer {
            tokenizer,
            cls_id: 2,
            sep_id: 3,
            pad_id: 0,
        })
    }

    fn check_max_len(max_len: usize) -> Result<()> {
        if max_len < 2 {
            bail!("max_len {max_len} is too small: [CLS] and [SEP] alone need 2");
        }
        Ok(())
    }

    /// Wraps content ids as `[CLS] ids [SEP]`, keeping the first `max_len - 2` of them.
    fn wrap(&self, ids: &[u32], max_len: usize) -> Vec<u32> {
        let keep = ids.len().min(max_len - 2);
        let mut out = Vec::with_capacity(keep + 2);
        out.push(self.cls_id);
        out.extend_from_slice(&ids[..keep]);
        out.push(self.sep_id);
        out
    }

    /// `[CLS] tokens [SEP]`, truncated so the total is <= max_len (>= 2).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        Self::check_max_len(max_len)?;
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("cannot tokenize text: {e}"))?;
        Ok(self.wrap(enc.get_ids(), max_len))
    }

    /// Same for many texts, in parallel (tokenizers' encode_batch or rayon), order preserved.
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Result<Vec<Vec<u32>>> {
        Self::check_max_len(max_len)?;
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| anyhow!("cannot tokenize texts: {e}"))?;
        Ok(encodings
            .iter()
            .map(|e| self.wrap(e.get_ids(), max_len))
            .collect())
    }

    /// The token strings of ids (for explain).
    pub fn id_to_token(&self, id: u32) -> String {
        self.tokenizer
            .id_to_token(id)
            .unwrap_or_else(|| format!("<id {id}>"))
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }

    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }

    /// Number of ids, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Writes tokenizer.json into `dir` atomically (so a training checkpoint is self-contained and loads with from_dir).
    ///
    /// `from_dir` finds the special tokens by their default names (`[CLS]`, `[SEP]`, `[PAD]`);
    /// a tokenizer that uses other names needs its tokenizer_config.json copied too.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = self
            .tokenizer
            .to_string(false)
            .map_err(|e| anyhow!("cannot serialize tokenizer: {e}"))?;
        crate::util::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())
    }
}
