//! Dataset readers: JSON Lines, CSV, TSV (each optionally gzip-compressed) and
//! folder-per-class text files, plus `labels.txt` and label-to-index mapping.
//!
//! Every error names the file and, where there is one, the line, because a malformed row
//! in a 10k-row file is otherwise hard to find.

use anyhow::{anyhow, bail, Context, Result};
use flate2::read::MultiGzDecoder;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One labelled document.
#[derive(Clone, Debug)]
pub struct Example {
    pub text: String,
    pub label: String,
    /// "path:line" or a file path, for error messages
    pub origin: String,
}

/// Column (or JSON field) names; `None` means "text" / "label".
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    pub text_column: Option<String>,
    pub label_column: Option<String>,
}

impl ReadOptions {
    fn text_column(&self) -> &str {
        self.text_column.as_deref().unwrap_or("text")
    }

    fn label_column(&self) -> &str {
        self.label_column.as_deref().unwrap_or("label")
    }
}

/// The splits of one dataset directory.
#[derive(Clone, Debug)]
pub struct DatasetSplits {
    pub dir: PathBuf,
    pub train: Vec<Example>,
    pub dev: Option<Vec<Example>>,
    pub test: Option<Vec<Example>>,
    /// from labels.txt if present, else sorted unique train labels
    pub labels: Vec<String>,
}

/// Split names tried, in order; the first is the canonical one.
const TRAIN_NAMES: &[&str] = &["train"];
const DEV_NAMES: &[&str] = &["dev", "validation", "valid"];
const TEST_NAMES: &[&str] = &["test"];
/// File suffixes tried after a split name; a folder `<split>/` is tried as well.
const SUFFIXES: &[&str] = &[".jsonl", ".jsonl.gz", ".csv", ".csv.gz", ".tsv", ".tsv.gz"];
const LABELS_FILE: &str = "labels.txt";

/// A dataset directory holds `train`, optional `dev` (also accept `validation`/`valid`),
/// optional `test`, each as `<split>.jsonl[.gz]`, `<split>.csv[.gz]`, `<split>.tsv[.gz]`,
/// or a folder `<split>/<class>/*.txt` (folder-per-class); optional labels.txt.
/// Missing train -> error naming the dir and the names tried.
///
/// Labels come from `labels.txt` when present (a train label missing from it, or a class
/// of it without a training example, is an error), else they are the sorted unique train labels (numerically sorted when every
/// label is an integer, so integer labels `0..n` map to indices `0..n`). Dev and test
/// labels are checked against them here, so an unknown label fails before training.
pub fn load_dataset(dir: &Path, opts: &ReadOptions) -> Result<DatasetSplits> {
    if !dir.is_dir() {
        bail!(
            "dataset directory {} does not exist or is not a directory",
            dir.display()
        );
    }
    let labels_path = dir.join(LABELS_FILE);
    let file_labels = if labels_path.exists() {
        Some(read_labels_file(&labels_path)?)
    } else {
        None
    };

    let train_path = find_split(dir, TRAIN_NAMES)?.ok_or_else(|| {
        anyhow!(
            "no training split in {}: tried {}",
            dir.display(),
            candidate_names(TRAIN_NAMES).join(", ")
        )
    })?;
    let train = read_split_with_labels(&train_path, opts, file_labels.as_deref())?;
    let dev = match find_split(dir, DEV_NAMES)? {
        Some(path) => Some(read_split_with_labels(&path, opts, file_labels.as_deref())?),
        None => None,
    };
    let test = match find_split(dir, TEST_NAMES)? {
        Some(path) => Some(read_split_with_labels(&path, opts, file_labels.as_deref())?),
        None => None,
    };

    let labels = match file_labels {
        Some(labels) => {
            let known: HashSet<&str> = labels.iter().map(String::as_str).collect();
            if let Some(bad) = train.iter().find(|e| !known.contains(e.label.as_str())) {
                bail!(
                    "{}: train label \"{}\" is not in {} (labels there: {})",
                    bad.origin,
                    bad.label,
                    labels_path.display(),
                    labels.join(", ")
                );
            }
            // A class nothing teaches would be predicted never (or by chance), and its
            // test examples would silently count as errors: reject it instead.
            let taught: HashSet<&str> = train.iter().map(|e| e.label.as_str()).collect();
            let untaught: Vec<&str> = labels
                .iter()
                .map(String::as_str)
                .filter(|l| !taught.contains(l))
                .collect();
            if !untaught.is_empty() {
                bail!(
                    "{}: class(es) {} have no training example in {}; remove them from {} or add \
                     training examples",
                    labels_path.display(),
                    untaught
                        .iter()
                        .map(|l| format!("\"{l}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    train_path.display(),
                    LABELS_FILE
                );
            }
            labels
        }
        None => sorted_unique_labels(&train),
    };
    if let Some(dev) = &dev {
        label_ids(dev, &labels, "dev")?;
    }
    if let Some(test) = &test {
        label_ids(test, &labels, "test")?;
    }

    Ok(DatasetSplits {
        dir: dir.to_path_buf(),
        train,
        dev,
        test,
        labels,
    })
}

/// One split file or folder, format by extension.
///
/// Integer JSONL labels index into a `labels.txt` in the same directory as `path` when
/// there is one (as `load_dataset` does), else they are used as strings.
pub fn read_split(path: &Path, opts: &ReadOptions) -> Result<Vec<Example>> {
    let labels_path = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(LABELS_FILE);
    let labels = if labels_path.is_file() {
        Some(read_labels_file(&labels_path)?)
    } else {
        None
    };
    read_split_with_labels(path, opts, labels.as_deref())
}

/// Like `read_split`, with the label list for integer JSONL labels given explicitly
/// (`None`: integer labels are used as strings).
pub fn read_split_with_labels(
    path: &Path,
    opts: &ReadOptions,
    labels: Option<&[String]>,
) -> Result<Vec<Example>> {
    let examples = if path.is_dir() {
        read_class_folders(path)?
    } else {
        if !path.is_file() {
            bail!("{} does not exist", path.display());
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let base = name.strip_suffix(".gz").unwrap_or(&name);
        if base.ends_with(".jsonl") {
            read_jsonl(path, opts, labels)?
        } else if base.ends_with(".csv") {
            read_delimited(path, opts, b',')?
        } else if base.ends_with(".tsv") {
            read_delimited(path, opts, b'\t')?
        } else {
            bail!(
                "{}: unknown format; expected .jsonl, .csv or .tsv (optionally .gz), or a folder of class folders",
                path.display()
            );
        }
    };
    if examples.is_empty() {
        bail!("{}: no examples", path.display());
    }
    Ok(examples)
}

/// Reads `labels.txt`: one label per line, surrounding whitespace trimmed, blank lines
/// ignored, duplicates an error.
pub fn read_labels_file(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut labels = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = std::str::from_utf8(raw)
            .map_err(|_| anyhow!("{}:{}: invalid UTF-8", path.display(), line_no))?;
        let label = line.trim();
        if label.is_empty() {
            continue;
        }
        if let Some(prev) = first_line.insert(label.to_string(), line_no) {
            bail!(
                "{}:{}: duplicate label \"{}\" (first on line {})",
                path.display(),
                line_no,
                label,
                prev
            );
        }
        labels.push(label.to_string());
    }
    if labels.is_empty() {
        bail!("{}: no labels", path.display());
    }
    Ok(labels)
}

/// Label indices into `labels`; an unknown label is an error naming the example's origin
/// and the label, and listing the known labels. `what` says which split (e.g. "test").
pub fn label_ids(examples: &[Example], labels: &[String], what: &str) -> Result<Vec<usize>> {
    let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(labels.len());
    for (i, label) in labels.iter().enumerate() {
        index_of.entry(label.as_str()).or_insert(i);
    }
    examples
        .iter()
        .map(|e| {
            index_of.get(e.label.as_str()).copied().ok_or_else(|| {
                anyhow!(
                    "{}: unknown {} label \"{}\"; known labels: {}",
                    e.origin,
                    what,
                    e.label,
                    labels.join(", ")
                )
            })
        })
        .collect()
}

/// Mean, median (mean of the two middle values for an even count) and maximum of
/// `lengths`; all zero for an empty slice.
pub fn length_stats(lengths: &[usize]) -> (f64, f64, usize) {
    if lengths.is_empty() {
        return (0.0, 0.0, 0);
    }
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let mean = sorted.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let median = if n % 2 == 1 {
        sorted[n / 2] as f64
    } else {
        (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0
    };
    (mean, median, sorted[n - 1])
}

/// Sorted unique labels: numeric order when all are integers, else code-point order
/// (Rust's `str` order, the same as Python's `sorted`).
fn sorted_unique_labels(examples: &[Example]) -> Vec<String> {
    let mut labels: Vec<String> = examples
        .iter()
        .map(|e| e.label.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let all_integers = labels.iter().all(|l| l.parse::<i64>().is_ok());
    if all_integers {
        // ties ("1" vs "01") broken by the string so the order never depends on hashing
        labels.sort_by(|a, b| {
            let (x, y) = (a.parse::<i64>().unwrap_or(0), b.parse::<i64>().unwrap_or(0));
            x.cmp(&y).then_with(|| a.cmp(b))
        });
    } else {
        labels.sort();
    }
    labels
}

fn candidate_names(split_names: &[&str]) -> Vec<String> {
    split_names
        .iter()
        .flat_map(|name| {
            SUFFIXES
                .iter()
                .map(move |suffix| format!("{name}{suffix}"))
                .chain(std::iter::once(format!("{name}/")))
        })
        .collect()
}

/// The one file or folder holding a split; more than one candidate is an error, since
/// silently preferring one format would hide a stale file.
fn find_split(dir: &Path, split_names: &[&str]) -> Result<Option<PathBuf>> {
    let found: Vec<PathBuf> = candidate_names(split_names)
        .iter()
        .map(|name| dir.join(name.trim_end_matches('/')))
        .filter(|path| {
            if path.extension().is_some() {
                path.is_file()
            } else {
                path.is_dir()
            }
        })
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        _ => bail!(
            "{}: several files for the same split, keep one: {}",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Opens `path`, decompressing when the name ends in `.gz`.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let is_gz = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gz"));
    Ok(if is_gz {
        Box::new(MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(file)
    })
}

/// Read failures mid-file are almost always a truncated or corrupt gzip stream.
fn read_error(path: &Path, line_no: usize, err: std::io::Error) -> anyhow::Error {
    let hint = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
    {
        " (corrupt or truncated gzip file?)"
    } else {
        ""
    };
    anyhow!(
        "{}:{}: read error{}: {}",
        path.display(),
        line_no,
        hint,
        err
    )
}

fn check_text(text: &str, origin: &dyn Fn() -> String) -> Result<()> {
    if text.trim().is_empty() {
        bail!("{}: empty or whitespace-only text", origin());
    }
    Ok(())
}

/// Labels are identifiers, so surrounding whitespace is dropped (unlike texts).
fn clean_label(raw: &str, origin: &dyn Fn() -> String) -> Result<String> {
    let label = raw.trim();
    if label.is_empty() {
        bail!("{}: empty label", origin());
    }
    Ok(label.to_string())
}

/// serde_json's message without its " at line 1 column N" suffix (each record is one
/// line, so the position is reported as file:line plus column instead).
fn json_error_text(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_string(),
        None => text,
    }
}

fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn read_jsonl(path: &Path, opts: &ReadOptions, labels: Option<&[String]>) -> Result<Vec<Example>> {
    let text_col = opts.text_column();
    let label_col = opts.label_column();
    let mut reader = BufReader::new(open_maybe_gz(path)?);
    let mut examples = Vec::new();
    let mut raw = Vec::new();
    let mut line_no = 0usize;
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| read_error(path, line_no + 1, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let origin = || format!("{}:{}", path.display(), line_no);
        let bytes = if line_no == 1 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&raw)
        } else {
            &raw[..]
        };
        let line = std::str::from_utf8(bytes).map_err(|e| {
            anyhow!(
                "{}: invalid UTF-8 at byte {} of the line",
                origin(),
                e.valid_up_to() + 1
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        // Without its line ending, so that serde_json's positions are on this line (a
        // string cut off by the newline otherwise reads as "control character at column 0").
        let line = line.trim_end_matches(['\n', '\r']);
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            // An end-of-input error has no useful column (serde_json says 0): the line
            // was cut off, which is what the user needs to hear.
            if e.is_eof() {
                anyhow!(
                    "{}: truncated JSON: the line ends after {} characters, inside a value ({})",
                    origin(),
                    line.chars().count(),
                    json_error_text(&e)
                )
            } else {
                anyhow!(
                    "{}: malformed JSON at column {}: {}",
                    origin(),
                    e.column(),
                    json_error_text(&e)
                )
            }
        })?;
        let object = value.as_object().ok_or_else(|| {
            anyhow!(
                "{}: expected a JSON object, found {}",
                origin(),
                json_type_name(&value)
            )
        })?;
        let field = |name: &str| {
            object.get(name).ok_or_else(|| {
                let present: Vec<&str> = object.keys().map(String::as_str).collect();
                anyhow!(
                    "{}: missing field \"{}\" (fields present: {})",
                    origin(),
                    name,
                    present.join(", ")
                )
            })
        };
        let text = match field(text_col)? {
            serde_json::Value::String(s) => s.clone(),
            other => bail!(
                "{}: field \"{}\" must be a string, found {}",
                origin(),
                text_col,
                json_type_name(other)
            ),
        };
        check_text(&text, &origin)?;
        let label = match field(label_col)? {
            serde_json::Value::String(s) => clean_label(s, &origin)?,
            serde_json::Value::Number(num) => match (num.as_i64(), labels) {
                (Some(i), Some(labels)) => usize::try_from(i)
                    .ok()
                    .and_then(|i| labels.get(i))
                    .cloned()
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: integer label {} is out of range for the {} labels in {}",
                            origin(),
                            i,
                            labels.len(),
                            LABELS_FILE
                        )
                    })?,
                (Some(i), None) => i.to_string(),
                (None, _) => bail!(
                    "{}: field \"{}\" must be a string or an integer, found {}",
                    origin(),
                    label_col,
                    num
                ),
            },
            other => bail!(
                "{}: field \"{}\" must be a string or an integer, found {}",
                origin(),
                label_col,
                json_type_name(other)
            ),
        };
        examples.push(Example {
            text,
            label,
            origin: origin(),
        });
    }
    Ok(examples)
}

/// 1-based line of the record starting at byte offset `byte`, given the offsets of every
/// `\n` of the input. The csv crate's own line count runs one behind on CRLF input, where
/// it also starts a record at the `\n` of the previous line's `\r\n` (hence `<=`).
fn line_at(newlines: &[usize], byte: u64) -> usize {
    newlines.partition_point(|&n| (n as u64) <= byte) + 1
}

/// Maps a csv error to one naming the file and line.
fn csv_error(path: &Path, newlines: &[usize], err: csv::Error) -> anyhow::Error {
    let line =
        |pos: &Option<csv::Position>| pos.as_ref().map_or(0, |p| line_at(newlines, p.byte()));
    match err.kind() {
        csv::ErrorKind::Utf8 { pos, err } => anyhow!(
            "{}:{}: invalid UTF-8 in field {}",
            path.display(),
            line(pos),
            err.field() + 1
        ),
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => anyhow!(
            "{}:{}: row has {} fields but the header has {}",
            path.display(),
            line(pos),
            len,
            expected_len
        ),
        csv::ErrorKind::Io(io) => {
            let hint = if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
            {
                " (corrupt or truncated gzip file?)"
            } else {
                ""
            };
            anyhow!("{}: read error{}: {}", path.display(), hint, io)
        }
        _ => anyhow!("{}: {}", path.display(), err),
    }
}

/// CSV (RFC 4180 quoting) or TSV (no quoting: every byte between tabs is text, the
/// usual TSV convention, so quotes in texts are kept exactly). Header row required.
fn read_delimited(path: &Path, opts: &ReadOptions, delimiter: u8) -> Result<Vec<Example>> {
    let text_col = opts.text_column();
    let label_col = opts.label_column();
    let mut bytes = Vec::new();
    open_maybe_gz(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| csv_error(path, &[], csv::Error::from(e)))?;
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(delimiter != b'\t')
        .has_headers(true)
        .from_reader(bytes.as_slice());
    let header = reader
        .headers()
        .map_err(|e| csv_error(path, &newlines, e))?
        .clone();
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        bail!(
            "{}: empty file; a header row naming the columns is required",
            path.display()
        );
    }
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            anyhow!(
                "{}:1: no column \"{}\" in the header (columns: {})",
                path.display(),
                name,
                header.iter().collect::<Vec<_>>().join(", ")
            )
        })
    };
    let text_index = column(text_col)?;
    let label_index = column(label_col)?;

    let mut examples = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, &newlines, e))?;
        let line_no = record
            .position()
            .map_or(0, |p| line_at(&newlines, p.byte()));
        let origin = || format!("{}:{}", path.display(), line_no);
        // Field counts are checked by the reader (flexible = false), so indexing is safe.
        let text = record[text_index].to_string();
        check_text(&text, &origin)?;
        let label = clean_label(&record[label_index], &origin)?;
        examples.push(Example {
            text,
            label,
            origin: origin(),
        });
    }
    Ok(examples)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// `<split>/<class>/*.txt`: the class is the folder name, the text the whole file
/// (a leading UTF-8 byte-order mark dropped, nothing else). Classes and files are read
/// in sorted order; hidden entries and non-`.txt` files are skipped.
fn read_class_folders(split_dir: &Path) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    for class_dir in sorted_entries(split_dir)? {
        if !class_dir.is_dir() || is_hidden(&class_dir) {
            continue;
        }
        let label = class_dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{}: class folder name is not UTF-8", class_dir.display()))?
            .to_string();
        let label = clean_label(&label, &|| class_dir.display().to_string())?;
        for file in sorted_entries(&class_dir)? {
            let is_txt = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
            if !is_txt || !file.is_file() || is_hidden(&file) {
                continue;
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
            let text = std::str::from_utf8(bytes).map_err(|e| {
                let line_no = 1 + bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                anyhow!("{}:{}: invalid UTF-8", file.display(), line_no)
            })?;
            let origin = file.display().to_string();
            check_text(text, &|| format!("{origin}:1"))?;
            examples.push(Example {
                text: text.to_string(),
                label: label.clone(),
                origin,
            });
        }
    }
    Ok(examples)
}
