//! The NIF functions of ARCHITECTURE.md: each decodes its arguments, makes one engine call and
//! encodes the answer.

use std::sync::Arc;
use std::time::Duration;

use rustler::types::atom;
use rustler::{Atom, Encoder, Env, Error, LocalPid, MapIterator, NifResult, ResourceArc, Term};
use snakepit_core::codec::{build_request_limited, CallSpec, Value};
use snakepit_core::engine::{Engine, SubmitRequest, WorkerError};
use snakepit_core::scheduler::RequestId;

use crate::atoms;
use crate::options::{engine_config, submit_opts, utf8, BadOption};
use crate::pool::PoolResource;
use crate::reply::{pool_reason, NifTarget, OwnerEvents, Registration};
use crate::runtime::runtime;
use crate::term_codec::{
    bytes_to_term, key_label, map_key, term_to_value, Budget, InvalidParameter,
};

fn raise(env: Env<'_>, tag: Atom, bad: BadOption) -> Error {
    let key = Atom::from_str(env, bad.key)
        .map(|a| a.encode(env))
        .unwrap_or_else(|_| bad.key.encode(env));
    Error::RaiseTerm(Box::new((
        tag,
        KeyTerm(key.to_binary().as_slice().to_vec()),
        bad.message,
    )))
}

/// A term carried across `Error::RaiseTerm` (which needs an owned `Encoder`) in external format.
struct KeyTerm(Vec<u8>);

impl Encoder for KeyTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        env.binary_to_term(&self.0)
            .map(|(t, _)| t)
            .unwrap_or_else(|| atom::nil().encode(env))
    }
}

/// `pool_new(config, owner_pid)`: a pool resource. Raises `{:invalid_config, key, message}`.
#[rustler::nif]
fn pool_new(
    env: Env<'_>,
    config: Term<'_>,
    owner: LocalPid,
) -> NifResult<ResourceArc<PoolResource>> {
    let config = engine_config(config).map_err(|b| raise(env, atoms::invalid_config(), b))?;
    let handle = runtime()
        .map_err(|e| Error::RaiseTerm(Box::new(e)))?
        .handle()
        .clone();
    let events = Arc::new(OwnerEvents {
        owner,
        handle: handle.clone(),
    });
    let engine = Engine::new(config, events, handle.clone());
    Ok(ResourceArc::new(PoolResource::new(engine, handle)))
}

/// `pool_add_worker(pool, worker_id, endpoint, capacity)`:
/// `:ok | {:error, :already_exists | :bad_capacity | {:bad_endpoint, message}}`.
#[rustler::nif]
fn pool_add_worker<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolResource>,
    worker_id: String,
    endpoint: String,
    capacity: u32,
) -> Term<'a> {
    match pool.engine.add_worker(&worker_id, &endpoint, capacity) {
        Ok(()) => atom::ok().encode(env),
        Err(e) => {
            let reason = match e {
                WorkerError::AlreadyExists(_) => atoms::already_exists().encode(env),
                WorkerError::BadCapacity => atoms::bad_capacity().encode(env),
                WorkerError::BadEndpoint(m) => (atoms::bad_endpoint(), m).encode(env),
                WorkerError::NotFound(_) => atoms::bad_endpoint().encode(env),
            };
            (atom::error(), reason).encode(env)
        }
    }
}

/// `pool_remove_worker(pool, worker_id, reason)`: `:ok` (also for unknown ids). In-flight
/// callers get `{:error, {:worker_exit, worker_id, reason}}`.
#[rustler::nif]
fn pool_remove_worker(
    pool: ResourceArc<PoolResource>,
    worker_id: String,
    reason: Term<'_>,
) -> Atom {
    // The reason travels as external term format, so any term comes back unchanged.
    let reason = Value::Bytes(reason.to_binary().as_slice().to_vec());
    let _ = pool.engine.worker_down(&worker_id, reason);
    atom::ok()
}

/// `pool_taint_worker(pool, worker_id, duration_ms)`: `:ok` (also for unknown ids).
#[rustler::nif]
fn pool_taint_worker(pool: ResourceArc<PoolResource>, worker_id: String, duration_ms: u64) -> Atom {
    let _ = pool
        .engine
        .taint(&worker_id, Duration::from_millis(duration_ms));
    atom::ok()
}

/// `pool_submit(pool, ref, command, args, opts)`: `{:ok, request_id} | {:error, reason}`.
/// Raises `{:invalid_option, key, message}` for malformed opts.
#[rustler::nif]
fn pool_submit<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolResource>,
    reference: Term<'a>,
    command: Term<'a>,
    arguments: Term<'a>,
    opts: Term<'a>,
) -> NifResult<Term<'a>> {
    let opts = submit_opts(opts).map_err(|b| raise(env, atoms::invalid_option(), b))?;
    let tool_name = match command.atom_to_string() {
        Ok(name) => name,
        Err(_) => utf8(command, "command").map_err(|b| raise(env, atoms::invalid_option(), b))?,
    };
    // Sizes are checked before anything is copied or encoded: an oversized call is refused in
    // time proportional to the bound, not to the argument.
    let max_bytes = pool.engine.max_message_bytes();
    let mut budget = Budget::new(max_bytes);
    for (name, bin) in &opts.binary_parameters {
        if let Err(message) = budget.charge(bin.len()) {
            let path = format!("binary_parameters.{name}");
            return Ok(invalid_parameter(env, InvalidParameter { path, message }));
        }
    }
    let args = match decode_args(arguments, &mut budget) {
        Ok(args) => args,
        Err(e) => return Ok(invalid_parameter(env, e)),
    };
    let binary_parameters = opts
        .binary_parameters
        .iter()
        .map(|(name, bin)| (name.clone(), bin.as_slice().to_vec()))
        .collect();
    let call = match build_request_limited(
        CallSpec {
            tool_name,
            args,
            binary_parameters,
            metadata: opts.metadata,
            stream: opts.stream_window.is_some(),
        },
        max_bytes,
    ) {
        Ok(call) => call,
        Err(e) => {
            let e = InvalidParameter {
                path: e.path,
                message: e.message,
            };
            return Ok(invalid_parameter(env, e));
        }
    };
    charge_timeslice(env, &call);
    let pid = env.pid();
    let id = pool.engine.reserve_id();
    // Registered before submitting, so a reply can never arrive before its monitor record.
    PoolResource::register(&pool, env, pid, id.0);
    let registration = Registration {
        pool: pool.clone(),
        pid,
        id: id.0,
    };
    let target = NifTarget::new(pid, reference, registration);
    let request = SubmitRequest {
        call,
        session: opts.session,
        affinity: opts.affinity,
        timeout: opts.timeout,
        stream_window: opts.stream_window,
        retry_on_crash: opts.retry_on_crash,
    };
    Ok(match pool.engine.submit(id, target, request) {
        Ok(id) => (atom::ok(), id.0).encode(env),
        Err(reason) => (atom::error(), pool_reason(env, reason)).encode(env),
    })
}

/// Decoding and JSON-encoding big arguments takes time on this (normal) scheduler; tell the VM,
/// so it can reschedule the caller fairly.
fn charge_timeslice(env: Env<'_>, call: &snakepit_core::pb::ExecuteToolRequest) {
    let bytes: usize = call
        .parameters
        .values()
        .map(|a| a.value.len())
        .sum::<usize>()
        + call.binary_parameters.values().map(Vec::len).sum::<usize>();
    charge_bytes(env, bytes);
}

/// Charges the calling process about 1 % of a timeslice per 10 kB handled (at least 1 %).
pub(crate) fn charge_bytes(env: Env<'_>, bytes: usize) {
    let percent = (bytes / 10_000).clamp(1, 100);
    rustler::schedule::consume_timeslice(env, i32::try_from(percent).unwrap_or(100));
}

fn decode_args(
    args: Term<'_>,
    budget: &mut Budget,
) -> Result<Vec<(String, Value)>, InvalidParameter> {
    let iter = MapIterator::new(args).ok_or_else(|| InvalidParameter {
        path: String::new(),
        message: "args must be a map".to_owned(),
    })?;
    iter.map(|(k, v)| {
        let key = map_key(k).map_err(|message| InvalidParameter {
            path: key_label(k),
            message,
        })?;
        let value = term_to_value(v, &key, budget)?;
        Ok((key, value))
    })
    .collect()
}

fn invalid_parameter(env: Env<'_>, e: InvalidParameter) -> Term<'_> {
    (
        atom::error(),
        (atoms::invalid_parameter(), e.path, e.message),
    )
        .encode(env)
}

/// `pool_cancel(pool, request_id)`: `:ok`; no message for the request arrives after it returns.
#[rustler::nif]
fn pool_cancel(pool: ResourceArc<PoolResource>, request_id: u64) -> Atom {
    pool.engine.cancel(RequestId(request_id));
    atom::ok()
}

/// `pool_stream_ack(pool, request_id, n)`: `:ok`.
#[rustler::nif]
fn pool_stream_ack(pool: ResourceArc<PoolResource>, request_id: u64, n: u64) -> Atom {
    pool.engine
        .stream_ack(RequestId(request_id), u32::try_from(n).unwrap_or(u32::MAX));
    atom::ok()
}

/// `pool_stats(pool)`: a map of counters (see ARCHITECTURE.md).
#[rustler::nif]
fn pool_stats(env: Env<'_>, pool: ResourceArc<PoolResource>) -> Term<'_> {
    let s = pool.engine.stats();
    let drain = pool.engine.drain_status();
    let available = s
        .workers
        .iter()
        .filter(|w| !w.tainted && w.load < w.capacity)
        .count();
    let busy = s.workers.iter().filter(|w| w.load > 0).count();
    let pairs: Vec<(Atom, u64)> = vec![
        (atoms::requests(), s.requests),
        (atoms::dispatched(), s.dispatched),
        (atoms::queued(), s.queue_len as u64),
        (atoms::queued_total(), s.queued_total),
        (atoms::queue_timeouts(), s.queue_timeouts),
        (atoms::pool_saturated(), s.saturated),
        (atoms::worker_busy(), s.rejected_busy),
        (atoms::session_worker_unavailable(), s.rejected_unavailable),
        (atoms::pool_closed(), s.rejected_closed),
        (atoms::no_workers_available(), s.rejected_no_workers),
        (atoms::cancelled(), s.cancelled),
        (atoms::worker_lost(), s.worker_lost),
        (atoms::completed(), s.completed),
        (atoms::recycles(), s.recycles),
        (atoms::in_flight(), s.in_flight as u64),
        (atoms::workers(), s.workers.len() as u64),
        (atoms::available(), available as u64),
        (atoms::busy(), busy as u64),
        (atoms::sessions(), s.sessions as u64),
        // Upstream's `errors` counter was never incremented; kept for shape compatibility.
        (atoms::errors(), 0),
        (atoms::monitored_callers(), pool.monitored_callers() as u64),
        (atoms::awaiting_reply(), drain.awaiting_reply as u64),
        (atoms::retries(), pool.engine.retries()),
    ];
    Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| Term::map_new(env))
}

/// `pool_workers(pool)`: `[%{id: binary, load: n, capacity: n, tainted: bool}]`.
#[rustler::nif]
fn pool_workers(env: Env<'_>, pool: ResourceArc<PoolResource>) -> Term<'_> {
    let workers: Vec<Term> = pool
        .engine
        .workers()
        .into_iter()
        .map(|w| {
            let keys = [
                atoms::id(),
                atoms::load(),
                atoms::capacity(),
                atoms::tainted(),
            ]
            .map(|a| a.encode(env));
            let values = [
                bytes_to_term(env, w.name.as_bytes()),
                w.load.encode(env),
                w.capacity.encode(env),
                w.tainted.encode(env),
            ];
            Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
        })
        .collect();
    workers.encode(env)
}

/// `pool_session_worker(pool, session_id)`: the worker id the session is bound to, or `nil`.
#[rustler::nif]
fn pool_session_worker(
    env: Env<'_>,
    pool: ResourceArc<PoolResource>,
    session_id: String,
) -> Term<'_> {
    match pool.engine.session_worker(&session_id) {
        Some(name) => bytes_to_term(env, name.as_bytes()),
        None => atom::nil().encode(env),
    }
}

/// `pool_delete_session(pool, session_id)`: `:ok`.
#[rustler::nif]
fn pool_delete_session(pool: ResourceArc<PoolResource>, session_id: String) -> Atom {
    pool.engine.delete_session(&session_id);
    atom::ok()
}

/// `pool_fail_queued(pool)`: `:ok`; every worker failed to start: queued callers get
/// `{:error, {:pool, :no_workers_available}}` at once, and so do new submits that would queue,
/// until a worker is added.
#[rustler::nif]
fn pool_fail_queued(pool: ResourceArc<PoolResource>) -> Atom {
    pool.engine.fail_queued();
    atom::ok()
}

/// `pool_close(pool)`: `:ok`; queued callers get `{:error, {:pool, :pool_closed}}`.
#[rustler::nif]
fn pool_close(pool: ResourceArc<PoolResource>) -> Atom {
    pool.engine.close();
    atom::ok()
}
