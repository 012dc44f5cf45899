//! `--model NAME`: Hugging Face hub ids (`bert-base-uncased`, `org/name`, `org/name@rev`)
//! resolved to a local model directory.
//!
//! An existing directory is used as it is. Otherwise a valid hub id is looked up in the
//! standard Hugging Face cache (the layout and environment variables `huggingface_hub`
//! uses, so models downloaded by Python are found too) and used offline when its snapshot
//! holds config.json, model.safetensors and a tokenizer; failing that it is downloaded
//! with the `hf-hub` crate into the same cache. `HF_HUB_OFFLINE=1` forbids the network;
//! without network the download fails within seconds (a TCP probe with a short connect
//! timeout runs first) with a message saying how to pass a local directory instead.

use anyhow::{bail, Result};
use std::io::IsTerminal;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The files a model directory needs (besides a tokenizer: tokenizer.json or vocab.txt).
const REQUIRED_FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// Where the hub and its cache are, and whether the network may be used.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// The hub cache (`models--org--name/{refs,snapshots,blobs}` folders); None when no
    /// home directory is known and no variable names one.
    pub cache_dir: Option<PathBuf>,
    /// `HF_HOME`: where the access token file lives.
    pub hf_home: Option<PathBuf>,
    /// Base URL of the hub, `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    /// `HF_HUB_OFFLINE`: never touch the network.
    pub offline: bool,
    /// How long the reachability probe waits for a TCP connection.
    pub connect_timeout: Duration,
}

impl HubSettings {
    /// The settings `huggingface_hub` derives from the environment: `HF_HUB_CACHE` (or the
    /// older `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; `HF_ENDPOINT`;
    /// `HF_HUB_OFFLINE` (1, true, yes or on).
    pub fn from_env() -> HubSettings {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            var("XDG_CACHE_HOME")
                .map(|c| PathBuf::from(c).join("huggingface"))
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")));
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| "https://huggingface.co".to_string());
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        HubSettings {
            cache_dir,
            hf_home,
            endpoint,
            offline,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A model repository on the hub, with an optional revision (branch, tag or commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    /// `name` or `org/name`.
    pub repo: String,
    pub revision: Option<String>,
}

impl HubId {
    /// Parses `name`, `org/name`, optionally followed by `@revision`, with the rules of
    /// `huggingface_hub`'s repo ids: letters, digits, `-`, `_` and `.`, not starting or
    /// ending with `-` or `.`, no `--` or `..`, at most 96 characters. None for anything
    /// else (e.g. a path such as `./dir` or `a/b/c`).
    pub fn parse(spec: &str) -> Option<HubId> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (spec, None),
        };
        if let Some(rev) = revision {
            let bad = rev.is_empty()
                || rev.contains("..")
                || rev.starts_with('/')
                || rev.chars().any(|c| c.is_whitespace() || c.is_control());
            if bad {
                return None;
            }
        }
        if repo.is_empty() || repo.len() > 96 || repo.split('/').count() > 2 {
            return None;
        }
        let part_ok = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !part.starts_with(['-', '.'])
                && !part.ends_with(['-', '.'])
                && !part.contains("--")
                && !part.contains("..")
        };
        if !repo.split('/').all(part_ok) {
            return None;
        }
        Some(HubId {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The cache folder of the repository: `models--org--name`.
    fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// What to do without network, appended to every failure to reach the hub.
const LOCAL_DIR_HINT: &str = "Without network, pass --model a local directory holding \
     config.json, model.safetensors and tokenizer.json or vocab.txt";

/// Resolves `--model`: an existing directory as it is, else a hub id through the cache or
/// a download (settings from the environment, see [`HubSettings::from_env`]). A spec that
/// is neither (a path such as `./missing/dir`) never touches the network.
pub fn resolve_model(spec: &Path) -> Result<PathBuf> {
    if spec.is_dir() {
        return Ok(spec.to_path_buf());
    }
    match spec.to_str().and_then(HubId::parse) {
        Some(id) => {
            let dir = resolve_hub_model(&id, &HubSettings::from_env())?;
            eprintln!("corefocus: --model {id}: using {}", dir.display());
            Ok(dir)
        }
        None => bail!(
            "checkpoint directory {} does not exist or is not a directory",
            spec.display()
        ),
    }
}

/// A snapshot directory found in the cache.
#[derive(Debug, PartialEq)]
pub enum CachedSnapshot {
    /// Holds every file a model directory needs.
    Complete(PathBuf),
    /// Exists but lacks these files (e.g. a Python download of the tokenizer only).
    Incomplete {
        dir: PathBuf,
        missing: Vec<String>,
    },
    Absent,
}

/// Looks up `id` in the hub cache `cache_dir` without any network access: the snapshot
/// `refs/<revision>` points to, or `snapshots/<revision>` when the revision is a commit.
pub fn cached_snapshot(cache_dir: &Path, id: &HubId) -> CachedSnapshot {
    let repo_dir = cache_dir.join(id.cache_folder());
    let revision = id.revision_or_main();
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit && repo_dir.join("snapshots").join(revision).is_dir() {
        revision.to_string()
    } else {
        match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
            Ok(text) => text.trim().to_string(),
            Err(_) => return CachedSnapshot::Absent,
        }
    };
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.contains("..") {
        return CachedSnapshot::Absent;
    }
    let dir = repo_dir.join("snapshots").join(&commit);
    if !dir.is_dir() {
        return CachedSnapshot::Absent;
    }
    let missing = missing_files(&dir);
    if missing.is_empty() {
        CachedSnapshot::Complete(dir)
    } else {
        CachedSnapshot::Incomplete { dir, missing }
    }
}

/// The model-directory files `dir` lacks (`is_file` follows the cache's symlinks, so a
/// dangling link counts as missing).
fn missing_files(dir: &Path) -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED_FILES
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    if !dir.join("tokenizer.json").is_file() && !dir.join("vocab.txt").is_file() {
        missing.push("tokenizer.json or vocab.txt".to_string());
    }
    missing
}

/// Resolves a hub id: the cached snapshot when complete, else a download (unless
/// `settings.offline`).
pub fn resolve_hub_model(id: &HubId, settings: &HubSettings) -> Result<PathBuf> {
    let Some(cache_dir) = &settings.cache_dir else {
        bail!(
            "cannot locate the Hugging Face cache for '{id}' (no HOME, HF_HOME or HF_HUB_CACHE); \
             it is not a local directory either. {LOCAL_DIR_HINT}"
        );
    };
    let incomplete = match cached_snapshot(cache_dir, id) {
        CachedSnapshot::Complete(dir) => return Ok(dir),
        CachedSnapshot::Incomplete { dir, missing } => Some((dir, missing)),
        CachedSnapshot::Absent => None,
    };
    if settings.offline {
        match incomplete {
            Some((dir, missing)) => bail!(
                "'{id}' is in the Hugging Face cache but incomplete ({} lacks {}), and \
                 HF_HUB_OFFLINE is set, so it cannot be downloaded. {LOCAL_DIR_HINT}",
                dir.display(),
                missing.join(", ")
            ),
            None => bail!(
                "'{id}' is not in the Hugging Face cache {} and HF_HUB_OFFLINE is set, so it \
                 cannot be downloaded; it is not a local directory either. {LOCAL_DIR_HINT}",
                cache_dir.display()
            ),
        }
    }
    download(id, cache_dir, settings)
}

/// Fetches the model files of `id` into the cache (files already there are not fetched
/// again) and returns the snapshot directory.
fn download(id: &HubId, cache_dir: &Path, settings: &HubSettings) -> Result<PathBuf> {
    let unreachable = |reason: String| {
        anyhow::anyhow!(
            "cannot download '{id}' from the Hugging Face hub ({reason}); it is not a local \
             directory either. {LOCAL_DIR_HINT}"
        )
    };
    probe_endpoint(&settings.endpoint, settings.connect_timeout).map_err(unreachable)?;

    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            let path = settings.hf_home.as_ref()?.join("token");
            let text = std::fs::read_to_string(path).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        });
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache_dir.into()))
        .with_endpoint(settings.endpoint.clone())
        .with_token(token)
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let repo = api.repo(hf_hub::Repo::with_revision(
        id.repo.clone(),
        hf_hub::RepoType::Model,
        id.revision_or_main().to_string(),
    ));
    eprintln!(
        "corefocus: downloading '{id}' from {} into {}",
        settings.endpoint,
        cache_dir.display()
    );

    // Required files: a failure names the file; a 401/404 means no such (public) model.
    let fetch_required = |file: &str| -> Result<PathBuf> {
        repo.get(file).map_err(|e| match http_status(&e) {
            Some(404) if file == "config.json" => anyhow::anyhow!(
                "the Hugging Face hub has no model '{id}' ({e}), and it is not a local \
                 directory either"
            ),
            Some(401 | 403) => anyhow::anyhow!(
                "the Hugging Face hub refused '{id}' ({e}): a private or gated model needs \
                 a token in HF_TOKEN"
            ),
            Some(404) => anyhow::anyhow!(
                "'{id}' on the Hugging Face hub has no {file} ({e}); corefocus needs \
                 config.json, model.safetensors and tokenizer.json or vocab.txt"
            ),
            _ => unreachable(format!("{file}: {e}")),
        })
    };
    let config = fetch_required("config.json")?;
    fetch_required("model.safetensors")?;
    // Optional files: absent on the hub is fine (404); other failures are reported.
    let fetch_optional = |file: &str| -> Result<Option<PathBuf>> {
        match repo.get(file) {
            Ok(path) => Ok(Some(path)),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(unreachable(format!("{file}: {e}"))),
        }
    };
    fetch_optional("tokenizer_config.json")?;
    if fetch_optional("tokenizer.json")?.is_none() && fetch_optional("vocab.txt")?.is_none() {
        bail!(
            "'{id}' on the Hugging Face hub has neither tokenizer.json nor vocab.txt; \
             corefocus needs one of them"
        );
    }
    let Some(dir) = config.parent().map(Path::to_path_buf) else {
        bail!(
            "hf-hub returned the path {} without a folder",
            config.display()
        );
    };
    // All files come from one commit, so they share the snapshot folder; if the repository
    // changed during the download, some would be in another one.
    let missing = missing_files(&dir);
    if !missing.is_empty() {
        bail!(
            "'{id}' changed on the hub during the download ({} lacks {}); run the command again",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(dir)
}

/// The HTTP status of a failed hub request, if the server answered.
fn http_status(e: &hf_hub::api::sync::ApiError) -> Option<u16> {
    match e {
        hf_hub::api::sync::ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        _ => None,
    }
}

/// Checks within `timeout` that a TCP connection to the endpoint's host can be opened, so
/// that no network fails in seconds rather than after the HTTP client's long timeouts.
/// Skipped when a proxy is configured (the client then connects to the proxy instead).
fn probe_endpoint(endpoint: &str, timeout: Duration) -> std::result::Result<(), String> {
    let proxied = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if proxied {
        return Ok(());
    }
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| format!("HF_ENDPOINT {endpoint:?} is not an http(s) URL"))?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return Err(format!("HF_ENDPOINT {endpoint:?} is not an http(s) URL")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    // Name resolution can hang without network; give it the same deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let lookup = host_port.clone();
    std::thread::spawn(move || {
        let _ = tx.send(
            lookup
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<SocketAddr>>()),
        );
    });
    let addrs = match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
        Ok(Ok(_)) => return Err(format!("{host_port} has no address")),
        Ok(Err(e)) => return Err(format!("cannot resolve {host_port}: {e}")),
        Err(_) => return Err(format!("resolving {host_port} timed out")),
    };
    let mut last = String::new();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("cannot connect to {host_port} ({addr}): {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(repo: &str, revision: Option<&str>) -> Option<HubId> {
        Some(HubId {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    #[test]
    fn hub_ids_parse_and_paths_do_not() {
        assert_eq!(
            HubId::parse("bert-base-uncased"),
            id("bert-base-uncased", None)
        );
        assert_eq!(
            HubId::parse("sentence-transformers/all-MiniLM-L6-v2"),
            id("sentence-transformers/all-MiniLM-L6-v2", None)
        );
        assert_eq!(HubId::parse("org/name@v1.0"), id("org/name", Some("v1.0")));
        assert_eq!(
            HubId::parse("org/name@refs/pr/1"),
            id("org/name", Some("refs/pr/1"))
        );
        for path in [
            "./missing/dir",
            "/abs/dir",
            "a/b/c",
            "../x",
            ".hidden",
            "",
            "org/",
            "/name",
            "my model",
            "a--b",
            "x..y",
            "name-",
            "org/name@",
            "org/name@../x",
            "~/models/x",
        ] {
            assert_eq!(HubId::parse(path), None, "{path:?}");
        }
        assert_eq!(HubId::parse(&"a".repeat(97)), None);
    }

    /// A fake cache: `models--org--name/snapshots/<sha>/` with `files`, and
    /// `refs/main` holding the sha.
    fn fake_cache(root: &Path, repo: &str, sha: &str, files: &[&str]) -> PathBuf {
        let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
        let snap = repo_dir.join("snapshots").join(sha);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), format!("{sha}\n")).unwrap();
        for f in files {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        snap
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("corefocus-hub-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn offline(cache: &Path) -> HubSettings {
        HubSettings {
            cache_dir: Some(cache.to_path_buf()),
            hf_home: None,
            // Never contacted: the cache answers, or offline refuses.
            endpoint: "http://127.0.0.1:9".to_string(),
            offline: true,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn complete_snapshots_resolve_from_the_cache() {
        let root = scratch("cache");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let files = ["config.json", "model.safetensors", "vocab.txt"];
        let snap = fake_cache(&root, "org/name", sha, &files);
        let settings = offline(&root);
        let resolved = resolve_hub_model(&HubId::parse("org/name").unwrap(), &settings);
        assert_eq!(resolved.unwrap(), snap);
        // A commit revision names the snapshot directly.
        let by_commit = HubId::parse(&format!("org/name@{sha}")).unwrap();
        assert_eq!(resolve_hub_model(&by_commit, &settings).unwrap(), snap);
        // A branch without a ref is not in the cache.
        let other = HubId::parse("org/name@dev").unwrap();
        assert_eq!(cached_snapshot(&root, &other), CachedSnapshot::Absent);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn incomplete_or_absent_snapshots_fail_offline_without_network() {
        let root = scratch("incomplete");
        let snap = fake_cache(&root, "solo", "abc", &["config.json", "tokenizer.json"]);
        let settings = offline(&root);
        let solo = HubId::parse("solo").unwrap();
        assert_eq!(
            cached_snapshot(&root, &solo),
            CachedSnapshot::Incomplete {
                dir: snap,
                missing: vec!["model.safetensors".to_string()]
            }
        );
        let err = resolve_hub_model(&solo, &settings).unwrap_err().to_string();
        assert!(
            err.contains("incomplete") && err.contains("model.safetensors"),
            "{err}"
        );
        assert!(err.contains("HF_HUB_OFFLINE") && err.contains("--model a local directory"));
        let err = resolve_hub_model(&HubId::parse("org/absent").unwrap(), &settings)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'org/absent' is not in the Hugging Face cache"),
            "{err}"
        );
        assert!(err.contains("--model a local directory"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_unreachable_hub_fails_fast() {
        let root = scratch("unreachable");
        let settings = HubSettings {
            offline: false,
            ..offline(&root)
        };
        let start = std::time::Instant::now();
        let err = resolve_hub_model(&HubId::parse("org/absent").unwrap(), &settings)
            .unwrap_err()
            .to_string();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(
            err.starts_with("cannot download 'org/absent' from the Hugging Face hub (cannot connect to 127.0.0.1:9"),
            "{err}"
        );
        assert!(err.contains("--model a local directory"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn directories_and_paths_never_reach_the_hub() {
        let root = scratch("paths");
        assert_eq!(resolve_model(&root).unwrap(), root);
        for missing in ["./missing/dir", "/no/such/dir", "a/b/c"] {
            let err = resolve_model(Path::new(missing)).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("checkpoint directory {missing} does not exist or is not a directory")
            );
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
