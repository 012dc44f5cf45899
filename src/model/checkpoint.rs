//! HF-format checkpoints: `config.json` + `model.safetensors` (+ tokenizer files), and
//! corefocus's own checkpoints (the same plus `corefocus.json`).
//!
//! Everything is held as f32 in a [`ParamStore`]; half-precision and f64 files are converted
//! on load, and files are always written as F32.

use super::config::BertConfig;
use super::names;
use super::params::ParamStore;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Reads a whole file, naming it in the error.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses the safetensors header of `bytes` (the contents of `path`), with an error that says
/// the file is truncated or not a safetensors file.
fn parse_safetensors<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow!(
            "{}: not a valid safetensors file (truncated or corrupt?): {e}",
            path.display()
        )
    })
}

/// Whether `dtype` is a floating-point type we convert to f32.
fn is_supported_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Converts one tensor's little-endian bytes to f32. Errors (naming the tensor and the file)
/// for dtypes other than F32/F16/BF16/F64.
fn tensor_to_f32(name: &str, view: &TensorView<'_>, path: &Path) -> Result<Vec<f32>> {
    let bytes = view.data();
    // Byte-wise decoding: the data of a tensor inside the file need not be aligned.
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        other => bail!(
            "{}: tensor `{name}` has dtype {other:?}; only floating-point tensors \
             (F32, F16, BF16, F64) can be loaded",
            path.display()
        ),
    };
    // safetensors validated byte length against shape and dtype already; this guards the
    // conversion above.
    debug_assert_eq!(data.len(), view.shape().iter().product::<usize>());
    Ok(data)
}

/// Reads every tensor of a safetensors file as f32 (F32 as is; F16 and BF16 converted with the `half`
/// crate; F64 narrowed). Other dtypes (ints, bool) are an error naming the tensor and dtype unless
/// `skip_non_float` is set, in which case they are skipped. Truncated/garbage files -> clear error naming the file.
///
/// Tensors appear in the store in file order (order of their data offsets).
pub fn read_safetensors(path: &Path, skip_non_float: bool) -> Result<ParamStore> {
    Ok(read_safetensors_with_metadata(path, skip_non_float)?.0)
}

/// [`read_safetensors`] that also returns the file's string metadata (`__metadata__`, empty
/// when absent).
pub fn read_safetensors_with_metadata(
    path: &Path,
    skip_non_float: bool,
) -> Result<(ParamStore, BTreeMap<String, String>)> {
    let bytes = read_file(path)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
        anyhow!(
            "{}: not a valid safetensors file (truncated or corrupt?): {e}",
            path.display()
        )
    })?;
    let file = parse_safetensors(&bytes, path)?;
    let mut store = ParamStore::new();
    for name in header.offset_keys() {
        let view = file
            .tensor(&name)
            .map_err(|e| anyhow!("{}: tensor `{name}`: {e}", path.display()))?;
        if skip_non_float && !is_supported_float(view.dtype()) {
            continue;
        }
        let data = tensor_to_f32(&name, &view, path)?;
        store.add(&name, view.shape(), data);
    }
    let metadata = header
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((store, metadata))
}

/// Writes tensors as F32 safetensors atomically (see [`write_tensor_refs`]), with optional
/// string metadata.
pub fn write_safetensors(
    path: &Path,
    store: &ParamStore,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let tensors = store
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.as_slice(), t.data.as_slice()))
        .collect();
    write_tensor_refs(path, tensors, metadata)
}

/// A tensor to write: name, shape and values, borrowed.
pub type TensorRef<'a> = (String, &'a [usize], &'a [f32]);

/// Streams `tensors` into the F32 safetensors file `path`, one chunk of bytes in memory at
/// a time (a whole-file buffer would double the memory of a checkpoint or resume save),
/// atomically (temporary file, fsync, rename: [`crate::util::write_atomic_with`]).
///
/// The bytes are those `safetensors::serialize` writes (tensors by name, each header entry
/// `dtype`, `shape`, `data_offsets`, the header padded with spaces to 8 bytes), except that
/// the metadata's keys are in sorted order: the crate takes them as a `HashMap`, whose order
/// changes from process to process, so the same weights gave different files.
pub fn write_tensor_refs(
    path: &Path,
    mut tensors: Vec<TensorRef>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = tensors.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            "cannot write {}: tensor {} given twice",
            path.display(),
            w[0].0
        );
    }
    for (name, shape, data) in &tensors {
        if shape.iter().product::<usize>() != data.len() {
            bail!(
                "cannot write {}: tensor {name} has shape {shape:?} but {} values",
                path.display(),
                data.len()
            );
        }
    }
    let header = safetensors_header(&tensors, metadata)?;
    crate::util::write_atomic_with(path, |tmp| {
        let file = std::fs::File::create(tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut bytes = Vec::with_capacity(4 * WRITE_CHUNK);
        let mut write = || -> std::io::Result<()> {
            out.write_all(&(header.len() as u64).to_le_bytes())?;
            out.write_all(&header)?;
            for (_, _, data) in &tensors {
                for chunk in data.chunks(WRITE_CHUNK) {
                    bytes.clear();
                    bytes.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                    out.write_all(&bytes)?;
                }
            }
            out.flush()
        };
        write().with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Values converted to bytes at a time while writing a tensor.
const WRITE_CHUNK: usize = 1 << 14;

/// The JSON header of a safetensors file of `tensors` (in their order, laid out one after
/// another), padded with spaces to a multiple of 8 bytes as the format's writer pads it.
fn safetensors_header(
    tensors: &[TensorRef],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        dtype: &'static str,
        shape: &'a [usize],
        data_offsets: [usize; 2],
    }
    struct Header<'a> {
        metadata: Option<&'a BTreeMap<String, String>>,
        tensors: &'a [TensorRef<'a>],
    }
    impl serde::Serialize for Header<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(None)?;
            if let Some(metadata) = self.metadata {
                map.serialize_entry("__metadata__", metadata)?;
            }
            let mut offset = 0;
            for (name, shape, data) in self.tensors {
                let end = offset + 4 * data.len();
                let entry = Entry {
                    dtype: "F32",
                    shape,
                    data_offsets: [offset, end],
                };
                map.serialize_entry(name, &entry)?;
                offset = end;
            }
            map.end()
        }
    }
    let mut header = serde_json::to_vec(&Header { metadata, tensors })?;
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok(header)
}

/// Names under which an HF `BertModel` tensor may be stored: with or without the `bert.`
/// prefix of task models, and LayerNorm `gamma`/`beta` (old TF-converted checkpoints such as
/// bert-base-uncased) for `weight`/`bias`.
fn candidate_names(name: &str) -> Vec<String> {
    let mut bases = vec![name.to_string()];
    if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
        bases.push(format!("{stem}LayerNorm.gamma"));
    } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
        bases.push(format!("{stem}LayerNorm.beta"));
    }
    let mut out = Vec::with_capacity(bases.len() * 2);
    for b in bases {
        out.push(format!("bert.{b}"));
        out.push(b);
    }
    out
}

/// Maps a file's tensor name to the HF `BertModel` name it would stand for (prefix stripped,
/// gamma/beta renamed).
fn canonical_name(file_name: &str) -> String {
    let n = file_name.strip_prefix("bert.").unwrap_or(file_name);
    if let Some(stem) = n.strip_suffix("LayerNorm.gamma") {
        format!("{stem}LayerNorm.weight")
    } else if let Some(stem) = n.strip_suffix("LayerNorm.beta") {
        format!("{stem}LayerNorm.bias")
    } else {
        n.to_string()
    }
}

/// Loads an HF BERT checkpoint directory: config.json (BertConfig::from_file, already written in
/// src/model/config.rs) + model.safetensors (or pytorch_model.bin -> clear error "convert to safetensors").
/// Accepts names with or without a `bert.` prefix (BertForSequenceClassification / BertForMaskedLM files);
/// ignores heads it does not need (cls.*, classifier.*, position_ids buffers). Returns a ParamStore holding exactly
/// the tensors of `names::bert_tensors(cfg)` in that order, with HF names (no prefix); the pooler is optional
/// (absent in the file -> absent in the store). A missing tensor or a wrong shape is an error naming the tensor,
/// its expected and actual shape, and the file.
///
/// Backbone tensors the configuration does not account for (e.g. an `encoder.layer.6` in a
/// file whose config says 6 layers) are an error too, since the model would silently differ
/// from the checkpoint.
pub fn load_hf_checkpoint(dir: &Path) -> Result<(BertConfig, ParamStore)> {
    if !dir.is_dir() {
        bail!(
            "checkpoint directory {} does not exist or is not a directory",
            dir.display()
        );
    }
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        bail!("{}: config.json is missing", dir.display());
    }
    let cfg = BertConfig::from_file(&config_path)?;

    let weights_path = dir.join("model.safetensors");
    if !weights_path.is_file() {
        if dir.join("pytorch_model.bin").is_file() {
            bail!(
                "{}: only pytorch_model.bin found, but corefocus reads model.safetensors only; \
                 convert to safetensors first, e.g. in Python: \
                 `BertModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`",
                dir.display()
            );
        }
        bail!("{}: model.safetensors is missing", dir.display());
    }
    let bytes = read_file(&weights_path)?;
    let file = parse_safetensors(&bytes, &weights_path)?;
    let file_names: Vec<String> = file.names().into_iter().map(String::from).collect();

    let expected = names::bert_tensors(&cfg);
    let mut store = ParamStore::new();
    let pooler_present = expected
        .iter()
        .filter(|(n, _)| names::is_pooler(n))
        .any(|(n, _)| candidate_names(n).iter().any(|c| file.tensor(c).is_ok()));

    for (name, shape) in &expected {
        if names::is_pooler(name) && !pooler_present {
            continue;
        }
        let found: Vec<String> = candidate_names(name)
            .into_iter()
            .filter(|c| file.tensor(c).is_ok())
            .collect();
        let file_name = match found.as_slice() {
            [] => bail!(
                "{}: tensor `{name}` (expected shape {shape:?}) is missing",
                weights_path.display()
            ),
            [one] => one,
            many => bail!(
                "{}: tensor `{name}` is stored more than once (as {}); cannot tell which to use",
                weights_path.display(),
                many.join(", ")
            ),
        };
        let view = file
            .tensor(file_name)
            .map_err(|e| anyhow!("{}: tensor `{file_name}`: {e}", weights_path.display()))?;
        if view.shape() != shape.as_slice() {
            bail!(
                "{}: tensor `{file_name}` has shape {:?}, but config.json implies {shape:?}",
                weights_path.display(),
                view.shape()
            );
        }
        let data = tensor_to_f32(file_name, &view, &weights_path)?;
        store.add(name, shape, data);
    }

    // Backbone tensors that the config does not explain mean the file and config disagree.
    let unexplained: Vec<&String> = file_names
        .iter()
        .filter(|f| {
            let canon = canonical_name(f);
            let backbone = ["embeddings.", "encoder.", "pooler."]
                .iter()
                .any(|p| canon.starts_with(p));
            // position_ids / token_type_ids are non-learnable buffers some versions save.
            let buffer = canon.ends_with("position_ids") || canon.ends_with("token_type_ids");
            backbone && !buffer && store.get(&canon).is_none()
        })
        .collect();
    if !unexplained.is_empty() {
        let shown: Vec<&str> = unexplained.iter().take(5).map(|s| s.as_str()).collect();
        bail!(
            "{}: {} backbone tensor(s) not expected for the model described by config.json \
             (e.g. {}); does config.json belong to this checkpoint?",
            weights_path.display(),
            unexplained.len(),
            shown.join(", ")
        );
    }
    Ok((cfg, store))
}
