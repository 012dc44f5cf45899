//! Checkpoint I/O: the real MiniLM checkpoint, safetensors round trips, half-precision
//! conversion and the error messages for broken checkpoints.

mod common;

use common::{test_model_dir, write_config, Scratch};
use corefocus::model::checkpoint::{
    load_hf_checkpoint, read_safetensors, read_safetensors_with_metadata, write_safetensors,
    write_tensor_refs,
};
use corefocus::model::names::bert_tensors;
use corefocus::model::{BertConfig, ParamStore};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Full error chain as one string.
fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn loads_minilm() {
    let dir = test_model_dir();
    let (cfg, store) = load_hf_checkpoint(&dir).unwrap();
    assert_eq!(cfg, {
        let mut want = BertConfig::minilm_l6();
        want.model_type = Some("bert".into());
        want
    });
    let expected = bert_tensors(&cfg);
    assert_eq!(
        store.len(),
        expected.len(),
        "every tensor incl. the pooler, no position_ids"
    );
    for (t, (name, shape)) in store.tensors.iter().zip(&expected) {
        assert_eq!(&t.name, name);
        assert_eq!(&t.shape, shape, "{name}");
        assert_eq!(t.data.len(), shape.iter().product::<usize>());
    }
    // Values read independently from the file (Python struct + json); f32 -> f64 is exact.
    let value = |name: &str, i: usize| store.get(name).unwrap().data[i] as f64;
    let word = "embeddings.word_embeddings.weight";
    assert_eq!(value(word, 0), -0.019989013671875);
    assert_eq!(value(word, 1), -0.0034027099609375);
    assert_eq!(value(word, 101 * 384 + 5), -0.0013143301475793123);
    let ln = "encoder.layer.5.output.LayerNorm.bias";
    assert_eq!(value(ln, 0), -0.03630739822983742);
    assert_eq!(value(ln, 383), 0.06612399220466614);
    assert_eq!(value("pooler.dense.weight", 0), -0.01512908935546875);

    // The generic reader sees the same data, plus the int64 position_ids buffer.
    let raw = read_safetensors(&dir.join("model.safetensors"), true).unwrap();
    assert_eq!(raw.len(), expected.len());
    for t in &store.tensors {
        assert_eq!(raw.get(&t.name).unwrap().data, t.data, "{}", t.name);
    }
    let err = err_text(read_safetensors(&dir.join("model.safetensors"), false));
    assert!(
        err.contains("embeddings.position_ids") && err.contains("I64"),
        "{err}"
    );
}

#[test]
fn write_read_round_trip() {
    let scratch = Scratch::new("roundtrip");
    let dir = scratch.dir();
    let mut store = ParamStore::new();
    store.add(
        "b.weight",
        &[2, 3],
        vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, 1e30, -0.0],
    );
    store.add("a.scalar", &[], vec![7.5]);
    store.add("c.bias", &[4], vec![0.1, 0.2, 0.3, 0.4]);
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("step".to_string(), "42".to_string());
    let path = dir.join("sub/weights.safetensors");
    write_safetensors(&path, &store, Some(&meta)).unwrap();

    let (back, back_meta) = read_safetensors_with_metadata(&path, false).unwrap();
    assert_eq!(back_meta, meta);
    assert_eq!(back.len(), store.len());
    for t in &store.tensors {
        let b = back.get(&t.name).unwrap();
        assert_eq!(b.shape, t.shape, "{}", t.name);
        assert_eq!(
            b.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{}",
            t.name
        );
    }
    // Overwriting works, leaves no temp files, and no metadata reads back as empty.
    write_safetensors(&path, &store, None).unwrap();
    let (_, no_meta) = read_safetensors_with_metadata(&path, false).unwrap();
    assert!(no_meta.is_empty());
    let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(files.len(), 1);
}

#[test]
fn written_files_are_the_crates_bytes_with_metadata_in_key_order() {
    let dir = Scratch::new("ckpt_bytes");
    let mut store = ParamStore::new();
    store.add("z.weight", &[2, 2], vec![1.0, 2.0, 3.0, -4.0]);
    store.add("a.scalar", &[], vec![0.5]);
    store.add("m.bias", &[3], vec![0.25, f32::MIN_POSITIVE, -0.0]);
    let crate_bytes = |meta: Option<HashMap<String, String>>| {
        let bytes: Vec<Vec<u8>> = store
            .tensors
            .iter()
            .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView)> = store
            .tensors
            .iter()
            .zip(&bytes)
            .map(|(t, b)| {
                let view = TensorView::new(Dtype::F32, t.shape.clone(), b).unwrap();
                (t.name.clone(), view)
            })
            .collect();
        safetensors::serialize(views, meta).unwrap()
    };
    let path = dir.path("w.safetensors");

    // Without metadata, and with one key (no order to differ in): the crate's bytes.
    write_safetensors(&path, &store, None).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), crate_bytes(None));
    let one = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&path, &store, Some(&one)).unwrap();
    let want = crate_bytes(Some(one.clone().into_iter().collect()));
    assert_eq!(std::fs::read(&path).unwrap(), want);

    // Many keys: the same bytes every time (the crate's order follows its HashMap's
    // per-instance random state), and they read back.
    let many: BTreeMap<String, String> = (0..16)
        .map(|i| (format!("key{i:02}"), format!("value {i}")))
        .collect();
    write_safetensors(&path, &store, Some(&many)).unwrap();
    let first = std::fs::read(&path).unwrap();
    for _ in 0..3 {
        write_safetensors(&path, &store, Some(&many)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
    }
    let (back, back_meta) = read_safetensors_with_metadata(&path, false).unwrap();
    assert_eq!(back_meta, many);
    assert_eq!(back.get("m.bias").unwrap().data[1], f32::MIN_POSITIVE);
}

#[test]
fn writing_a_tensor_twice_or_with_the_wrong_length_fails_and_leaves_no_file() {
    let dir = Scratch::new("ckpt_write_errors");
    let path = dir.path("w.safetensors");
    let values = [1.0f32, 2.0, 3.0, 4.0];
    let twice = vec![
        ("a".to_string(), &[2usize][..], &values[..2]),
        ("a".to_string(), &[2usize][..], &values[2..]),
    ];
    let err = err_text(write_tensor_refs(&path, twice, None));
    assert!(
        err.contains("tensor a given twice") && err.contains("w.safetensors"),
        "{err}"
    );
    let short = vec![("b".to_string(), &[2usize, 3][..], &values[..])];
    let err = err_text(write_tensor_refs(&path, short, None));
    assert!(
        err.contains("tensor b has shape [2, 3] but 4 values"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.dir()).unwrap().count(), 0);
}

// ---- a tiny synthetic checkpoint for the error cases ----

/// (name, shape, values) of one tensor.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

fn tiny_config() -> BertConfig {
    BertConfig::sized(11, 4, 2, 2, 8)
}

/// Tensor names/shapes of `cfg` with deterministic values that are exact in f16 and bf16
/// (small multiples of 1/8).
fn tiny_tensors(cfg: &BertConfig) -> Vec<NamedTensor> {
    bert_tensors(cfg)
        .into_iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|i| ((i * 7 + t * 3) % 33) as f32 / 8.0 - 2.0)
                .collect();
            (name, shape, data)
        })
        .collect()
}

enum Enc {
    F32,
    F16,
    Bf16,
    F64,
}

fn encode(data: &[f32], enc: &Enc) -> (Dtype, Vec<u8>) {
    match enc {
        Enc::F32 => (
            Dtype::F32,
            data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Enc::F16 => (
            Dtype::F16,
            data.iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
        ),
        Enc::Bf16 => (
            Dtype::BF16,
            data.iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        ),
        Enc::F64 => (
            Dtype::F64,
            data.iter()
                .flat_map(|&x| (x as f64).to_le_bytes())
                .collect(),
        ),
    }
}

/// Writes `tensors` (+ any extra raw tensors) with the safetensors crate directly.
fn write_raw(
    path: &Path,
    tensors: &[NamedTensor],
    enc: Enc,
    extra: &[(String, Dtype, Vec<usize>, Vec<u8>)],
) {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let (dtype, bytes) = encode(d, &enc);
            (n.clone(), dtype, s.clone(), bytes)
        })
        .collect();
    owned.extend(extra.iter().cloned());
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, dt, s, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A valid tiny checkpoint directory with F32 weights.
fn tiny_checkpoint(tag: &str) -> (Scratch, BertConfig, Vec<NamedTensor>) {
    let dir = Scratch::new(tag);
    let cfg = tiny_config();
    let tensors = tiny_tensors(&cfg);
    write_config(dir.dir(), &cfg);
    write_raw(&dir.path("model.safetensors"), &tensors, Enc::F32, &[]);
    (dir, cfg, tensors)
}

fn assert_matches(store: &ParamStore, tensors: &[NamedTensor]) {
    assert_eq!(store.len(), tensors.len());
    for (t, (name, shape, data)) in store.tensors.iter().zip(tensors) {
        assert_eq!((&t.name, &t.shape), (name, shape));
        assert_eq!(&t.data, data, "{name}");
    }
}

#[test]
fn tiny_checkpoint_loads() {
    let (scratch, cfg, tensors) = tiny_checkpoint("ok");
    let dir = scratch.dir();
    let (got_cfg, store) = load_hf_checkpoint(dir).unwrap();
    assert_eq!(got_cfg, cfg);
    assert_matches(&store, &tensors);
}

#[test]
fn half_and_double_precision_are_converted() {
    for (tag, enc) in [("f16", Enc::F16), ("bf16", Enc::Bf16), ("f64", Enc::F64)] {
        let (scratch, _, tensors) = tiny_checkpoint(tag);
        let dir = scratch.dir();
        let path = dir.join("model.safetensors");
        write_raw(&path, &tensors, enc, &[]);
        let (_, store) = load_hf_checkpoint(dir).unwrap();
        assert_matches(&store, &tensors);
        let raw = read_safetensors(&path, false).unwrap();
        for (name, _, data) in &tensors {
            assert_eq!(&raw.get(name).unwrap().data, data, "{tag} {name}");
        }
    }
    // A value that is not exact in bf16 is rounded the way `half` rounds it.
    let scratch = Scratch::new("bf16-rounding");
    let dir = scratch.dir();
    let path = dir.join("x.safetensors");
    let t = vec![("x".to_string(), vec![2], vec![1.0f32 / 3.0, 1000.1])];
    write_raw(&path, &t, Enc::Bf16, &[]);
    let got = read_safetensors(&path, false)
        .unwrap()
        .get("x")
        .unwrap()
        .data
        .clone();
    assert_eq!(got, vec![half::bf16::from_f32(1.0 / 3.0).to_f32(), 1000.0]);
}

#[test]
fn task_model_prefix_and_heads_are_handled() {
    let (scratch, _, tensors) = tiny_checkpoint("prefixed");
    let dir = scratch.dir();
    // BertForSequenceClassification layout without pooler: `bert.` prefix, a classifier head,
    // an MLM head with a LayerNorm, and the int64 position_ids buffer.
    let mut prefixed: Vec<_> = tensors
        .iter()
        .filter(|(n, _, _)| !n.starts_with("pooler."))
        .map(|(n, s, d)| (format!("bert.{n}"), s.clone(), d.clone()))
        .collect();
    prefixed.push(("classifier.weight".into(), vec![3, 4], vec![0.5; 12]));
    prefixed.push((
        "cls.predictions.transform.LayerNorm.weight".into(),
        vec![4],
        vec![1.0; 4],
    ));
    let ids: Vec<u8> = (0..16i64).flat_map(|i| i.to_le_bytes()).collect();
    let buffer = (
        "bert.embeddings.position_ids".to_string(),
        Dtype::I64,
        vec![1, 16],
        ids,
    );
    write_raw(
        &dir.join("model.safetensors"),
        &prefixed,
        Enc::F32,
        &[buffer],
    );
    let (_, store) = load_hf_checkpoint(dir).unwrap();
    let no_pooler: Vec<_> = tensors
        .iter()
        .filter(|(n, _, _)| !n.starts_with("pooler."))
        .cloned()
        .collect();
    assert_matches(&store, &no_pooler);
    assert!(store.get("pooler.dense.weight").is_none());

    // Old TF-converted names: LayerNorm gamma/beta.
    let renamed: Vec<_> = tensors
        .iter()
        .map(|(n, s, d)| {
            let n = n
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (n, s.clone(), d.clone())
        })
        .collect();
    write_raw(&dir.join("model.safetensors"), &renamed, Enc::F32, &[]);
    let (_, store) = load_hf_checkpoint(dir).unwrap();
    assert_matches(&store, &tensors);
}

#[test]
fn broken_weight_files_name_the_file() {
    let (scratch, _, _) = tiny_checkpoint("truncated");
    let dir = scratch.dir();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for (what, contents) in [
        ("truncated data", bytes[..bytes.len() - 10].to_vec()),
        ("truncated header", bytes[..20].to_vec()),
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&path, &contents).unwrap();
        let err = err_text(load_hf_checkpoint(dir));
        assert!(err.contains(&path.display().to_string()), "{what}: {err}");
        assert!(
            err.contains("not a valid safetensors file"),
            "{what}: {err}"
        );
        let err = err_text(read_safetensors(&path, true));
        assert!(err.contains(&path.display().to_string()), "{what}: {err}");
    }
    let missing = dir.join("nope.safetensors");
    let err = err_text(read_safetensors(&missing, true));
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let (scratch, _, tensors) = tiny_checkpoint("missing");
    let dir = scratch.dir();
    let path = dir.join("model.safetensors");
    let without: Vec<_> = tensors
        .iter()
        .filter(|(n, _, _)| n != "encoder.layer.1.intermediate.dense.weight")
        .cloned()
        .collect();
    write_raw(&path, &without, Enc::F32, &[]);
    let err = err_text(load_hf_checkpoint(dir));
    assert!(
        err.contains("encoder.layer.1.intermediate.dense.weight"),
        "{err}"
    );
    assert!(err.contains("missing") && err.contains("[8, 4]"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    // Half a pooler is an error, not "no pooler".
    let without: Vec<_> = tensors
        .iter()
        .filter(|(n, _, _)| n != "pooler.dense.bias")
        .cloned()
        .collect();
    write_raw(&path, &without, Enc::F32, &[]);
    let err = err_text(load_hf_checkpoint(dir));
    assert!(
        err.contains("pooler.dense.bias") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let (scratch, _, mut tensors) = tiny_checkpoint("shape");
    let dir = scratch.dir();
    let path = dir.join("model.safetensors");
    let t = tensors
        .iter_mut()
        .find(|(n, _, _)| n == "encoder.layer.0.attention.self.key.weight");
    let (_, shape, _) = t.unwrap();
    *shape = vec![2, 8];
    write_raw(&path, &tensors, Enc::F32, &[]);
    let err = err_text(load_hf_checkpoint(dir));
    assert!(
        err.contains("encoder.layer.0.attention.self.key.weight"),
        "{err}"
    );
    assert!(err.contains("[2, 8]") && err.contains("[4, 4]"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn bad_dtypes_and_unexplained_tensors() {
    let (scratch, _, tensors) = tiny_checkpoint("dtype");
    let dir = scratch.dir();
    let path = dir.join("model.safetensors");
    // A required tensor stored as int32.
    let name = "embeddings.LayerNorm.bias";
    let others: Vec<_> = tensors
        .iter()
        .filter(|(n, _, _)| n != name)
        .cloned()
        .collect();
    let ints: Vec<u8> = (0..4i32).flat_map(|i| i.to_le_bytes()).collect();
    write_raw(
        &path,
        &others,
        Enc::F32,
        &[(name.into(), Dtype::I32, vec![4], ints)],
    );
    let err = err_text(load_hf_checkpoint(dir));
    assert!(err.contains(name) && err.contains("I32"), "{err}");
    let err = err_text(read_safetensors(&path, false));
    assert!(err.contains(name) && err.contains("I32"), "{err}");
    let skipped = read_safetensors(&path, true).unwrap();
    assert_eq!(skipped.len(), tensors.len() - 1);
    assert!(skipped.get(name).is_none());

    // A third layer the config (2 layers) does not know about.
    let extra = (
        "encoder.layer.2.output.dense.bias".to_string(),
        vec![4],
        vec![0.0; 4],
    );
    let mut more = tensors.clone();
    more.push(extra);
    write_raw(&path, &more, Enc::F32, &[]);
    let err = err_text(load_hf_checkpoint(dir));
    assert!(err.contains("encoder.layer.2.output.dense.bias"), "{err}");
}

#[test]
fn config_errors() {
    let (scratch, cfg, _) = tiny_checkpoint("config");
    let dir = scratch.dir();
    let config_path = dir.join("config.json");

    let mut relu = cfg.clone();
    relu.hidden_act = "relu".into();
    write_config(dir, &relu);
    let err = err_text(load_hf_checkpoint(dir));
    assert!(err.contains("hidden_act") && err.contains("relu"), "{err}");
    assert!(err.contains(&config_path.display().to_string()), "{err}");

    let mut odd = cfg.clone();
    odd.num_attention_heads = 3;
    write_config(dir, &odd);
    let err = err_text(load_hf_checkpoint(dir));
    assert!(
        err.contains("hidden_size") && err.contains("num_attention_heads"),
        "{err}"
    );

    std::fs::write(&config_path, b"{\"hidden_size\": ").unwrap();
    let err = err_text(load_hf_checkpoint(dir));
    assert!(err.contains(&config_path.display().to_string()), "{err}");

    std::fs::remove_file(&config_path).unwrap();
    let err = err_text(load_hf_checkpoint(dir));
    assert!(
        err.contains("config.json") && err.contains(&dir.display().to_string()),
        "{err}"
    );
}

#[test]
fn weight_file_errors() {
    let (scratch, _, _) = tiny_checkpoint("bin");
    let dir = scratch.dir();
    std::fs::rename(dir.join("model.safetensors"), dir.join("pytorch_model.bin")).unwrap();
    let err = err_text(load_hf_checkpoint(dir));
    assert!(err.contains("convert to safetensors"), "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");

    std::fs::remove_file(dir.join("pytorch_model.bin")).unwrap();
    let err = err_text(load_hf_checkpoint(dir));
    assert!(err.contains("model.safetensors"), "{err}");

    let missing_dir = dir.join("does-not-exist");
    let err = err_text(load_hf_checkpoint(&missing_dir));
    assert!(err.contains(&missing_dir.display().to_string()), "{err}");
}
