//! Decoding of the `pool_new` config map and the `pool_submit` opts map (atom keys).

use std::time::Duration;

use rustler::types::atom;
use rustler::{Atom, Binary, MapIterator, Term};
use snakepit_core::engine::{EngineConfig, DEFAULT_ABANDON_GRACE};
use snakepit_core::scheduler::{Affinity, SessionId};

use crate::atoms;

/// A bad option: `{:invalid_option | :invalid_config, key, message}` (raised: the Elixir layer
/// validates options, so this is a programming error).
#[derive(Debug)]
pub struct BadOption {
    /// The key, as its atom name.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> BadOption {
    BadOption {
        key,
        message: message.into(),
    }
}

/// `map[key]`, treating a missing key and `nil` alike.
fn get<'a>(map: Term<'a>, key: Atom) -> Option<Term<'a>> {
    let v = map.map_get(key).ok()?;
    (v != atom::nil().to_term(map.get_env())).then_some(v)
}

fn non_neg(map: Term<'_>, key: Atom, name: &'static str) -> Result<Option<u64>, BadOption> {
    match get(map, key) {
        None => Ok(None),
        Some(t) => t
            .decode::<u64>()
            .map(Some)
            .map_err(|_| bad(name, "expected a non-negative integer")),
    }
}

fn millis(map: Term<'_>, key: Atom, name: &'static str) -> Result<Option<Duration>, BadOption> {
    Ok(non_neg(map, key, name)?.map(Duration::from_millis))
}

/// A binary that must be UTF-8 (ids, names).
pub fn utf8(term: Term<'_>, name: &'static str) -> Result<String, BadOption> {
    let bin = Binary::from_term(term).map_err(|_| bad(name, "expected a binary"))?;
    std::str::from_utf8(bin.as_slice())
        .map(str::to_owned)
        .map_err(|_| bad(name, "expected a UTF-8 binary"))
}

fn affinity_of(term: Term<'_>, name: &'static str) -> Result<Affinity, BadOption> {
    let text = term
        .atom_to_string()
        .map_err(|_| bad(name, "expected :hint, :strict_queue or :strict_fail_fast"))?;
    Affinity::parse(&text).ok_or_else(|| bad(name, format!("unknown affinity :{text}")))
}

/// Builds the engine configuration from `pool_new`'s map; missing keys take the defaults.
pub fn engine_config(map: Term<'_>) -> Result<EngineConfig, BadOption> {
    if !map.is_map() {
        return Err(bad("config", "expected a map"));
    }
    let mut config = EngineConfig::default();
    let s = &mut config.scheduler;
    if let Some(t) = get(map, atoms::affinity()) {
        s.default_affinity = affinity_of(t, "affinity")?;
    }
    if let Some(n) = non_neg(map, atoms::max_queue_size(), "max_queue_size")? {
        s.max_queue_size = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(d) = millis(map, atoms::queue_timeout_ms(), "queue_timeout_ms")? {
        s.queue_timeout = d;
    }
    if let Some(d) = millis(map, atoms::affinity_ttl_ms(), "affinity_ttl_ms")? {
        s.affinity_ttl = d;
    }
    if let Some(n) = non_neg(map, atoms::max_affinity_entries(), "max_affinity_entries")? {
        s.max_affinity_entries = usize::try_from(n).unwrap_or(usize::MAX);
    }
    // Missing: the default grace; explicit `nil`: never recycle.
    s.abandon_grace = match map.map_get(atoms::abandon_grace_ms()) {
        Err(_) => Some(DEFAULT_ABANDON_GRACE),
        Ok(_) => millis(map, atoms::abandon_grace_ms(), "abandon_grace_ms")?,
    };
    if let Some(d) = millis(map, atoms::crash_verdict_ms(), "crash_verdict_ms")? {
        if d > MAX_CRASH_VERDICT {
            return Err(bad(
                "crash_verdict_ms",
                "expected a non-negative integer up to 60000",
            ));
        }
        config.crash_verdict = d;
    }
    if let Some(n) = non_neg(map, atoms::max_message_bytes(), "max_message_bytes")? {
        config.transport.max_message_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(d) = millis(map, atoms::connect_timeout_ms(), "connect_timeout_ms")? {
        config.transport.connect_timeout = d;
    }
    Ok(config)
}

/// Longest crash verdict accepted: it delays the error of a connection failure.
const MAX_CRASH_VERDICT: Duration = Duration::from_secs(60);

/// `pool_submit`'s opts.
#[derive(Default)]
pub struct SubmitOpts<'a> {
    pub session: Option<SessionId>,
    pub affinity: Option<Affinity>,
    pub timeout: Option<Duration>,
    /// Borrowed from the caller's heap: sizes are checked before anything is copied.
    pub binary_parameters: Vec<(String, Binary<'a>)>,
    pub metadata: Vec<(String, String)>,
    /// `Some(window)` for streaming calls.
    pub stream_window: Option<u32>,
    /// Resubmissions after a lost worker (0: none).
    pub retry_on_crash: u32,
}

/// Default number of un-acked chunks of a stream.
pub const DEFAULT_STREAM_WINDOW: u32 = 16;

/// Decodes `pool_submit`'s opts map (an empty map gives the defaults).
pub fn submit_opts(map: Term<'_>) -> Result<SubmitOpts<'_>, BadOption> {
    if !map.is_map() {
        return Err(bad("opts", "expected a map"));
    }
    let mut opts = SubmitOpts::default();
    if let Some(t) = get(map, atoms::session_id()) {
        opts.session = Some(SessionId::from(utf8(t, "session_id")?));
    }
    if let Some(t) = get(map, atoms::affinity()) {
        opts.affinity = Some(affinity_of(t, "affinity")?);
    }
    if let Some(t) = get(map, atoms::timeout_ms()) {
        if t != atoms::infinity().to_term(map.get_env()) {
            let ms = t
                .decode::<u64>()
                .map_err(|_| bad("timeout_ms", "expected a non-negative integer or :infinity"))?;
            opts.timeout = Some(Duration::from_millis(ms));
        }
    }
    if let Some(t) = get(map, atoms::binary_parameters()) {
        for (k, v) in entries(t, "binary_parameters")? {
            let bin = Binary::from_term(v)
                .map_err(|_| bad("binary_parameters", "values must be binaries"))?;
            opts.binary_parameters.push((k, bin));
        }
    }
    if let Some(t) = get(map, atoms::metadata()) {
        for (k, v) in entries(t, "metadata")? {
            opts.metadata.push((k, utf8(v, "metadata")?));
        }
    }
    let stream = match get(map, atoms::stream()) {
        None => false,
        Some(t) => t
            .decode::<bool>()
            .map_err(|_| bad("stream", "expected a boolean"))?,
    };
    if stream {
        let window = match get(map, atoms::stream_window()) {
            None => DEFAULT_STREAM_WINDOW,
            Some(t) => t
                .decode::<u32>()
                .ok()
                .filter(|w| *w > 0)
                .ok_or_else(|| bad("stream_window", "expected a positive integer"))?,
        };
        opts.stream_window = Some(window);
    }
    if let Some(n) = non_neg(map, atoms::retry_on_crash(), "retry_on_crash")? {
        opts.retry_on_crash = u32::try_from(n).unwrap_or(u32::MAX);
    }
    Ok(opts)
}

/// A map's entries with string-like keys (binary or atom).
fn entries<'a>(map: Term<'a>, name: &'static str) -> Result<Vec<(String, Term<'a>)>, BadOption> {
    let iter = MapIterator::new(map).ok_or_else(|| bad(name, "expected a map"))?;
    iter.map(|(k, v)| {
        let key = match k.atom_to_string() {
            Ok(a) => a,
            Err(_) => utf8(k, name)?,
        };
        Ok((key, v))
    })
    .collect()
}
