//! Messages from tokio threads to Elixir processes: the per-request [`NifTarget`] and the pool
//! owner's [`OwnerEvents`].
//!
//! Shapes (ARCHITECTURE.md):
//! - `{:snakepit_reply, ref, {:ok, term} | {:error, reason} | :done}`
//! - `{:snakepit_chunk, ref, payload, is_final, metadata}`
//! - `{:snakepit_pool_event, {:recycle_worker, worker_id}}` (to the owner)
//!
//! A reply or chunk that holds a map with more than 128 keys is sent in external term format
//! instead (`{:snakepit_reply, ref, {:etf, binary}}` whose binary decodes to the body above, and
//! `{:snakepit_chunk_etf, ref, binary}` whose binary decodes to `{payload, is_final, metadata}`):
//! building such a map (a hash map) in an `OwnedEnv` and sending it from a non-scheduler thread
//! crashes OTP 25.1 .. 27.2 (erlang/otp#8208). Binaries are not affected. The caller decodes with
//! `:erlang.binary_to_term/1` on its own scheduler and gets the same term as the direct path.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rustler::env::SavedTerm;
use rustler::thread::is_scheduler_thread;
use rustler::types::atom;
use rustler::{Atom, Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};
use snakepit_core::codec::etf::{has_large_map, EtfWriter, MAX_FLATMAP_KEYS};
use snakepit_core::codec::{ChunkPayload, ToolResult, Value};
use snakepit_core::engine::{Chunk, ErrorReason, Outcome, PoolEvents, ReplyTarget};
use snakepit_core::scheduler::RejectReason;
use tokio::runtime::Handle;

use crate::atoms;
use crate::pool::PoolResource;
use crate::term_codec::{bytes_to_term, value_to_term};

/// Where one request's messages go: the caller pid and its `ref`.
///
/// The ref lives in its own env: `send_and_clear` clears the env it sends from, which would
/// invalidate a ref saved there before the next chunk.
pub struct NifTarget {
    pid: LocalPid,
    tag_env: OwnedEnv,
    tag: SavedTerm,
    /// Created on the first chunk (unary calls never need it).
    chunk_env: Option<OwnedEnv>,
    /// Unregisters the request from the caller monitor table when the target goes away.
    registration: Registration,
}

impl NifTarget {
    /// Saves `reference` for the messages to `pid`.
    pub fn new(pid: LocalPid, reference: Term<'_>, registration: Registration) -> Self {
        let tag_env = OwnedEnv::new();
        let tag = tag_env.save(reference);
        NifTarget {
            pid,
            tag_env,
            tag,
            chunk_env: None,
            registration,
        }
    }
}

/// A request's entry in its caller's monitor record; released on drop (reply or cancel).
pub struct Registration {
    pub(crate) pool: ResourceArc<PoolResource>,
    pub(crate) pid: LocalPid,
    pub(crate) id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        PoolResource::release(&self.pool, self.pid, self.id);
    }
}

impl ReplyTarget for NifTarget {
    fn reply(mut self, outcome: Outcome) {
        if is_scheduler_thread() {
            // The engine never does this; `send_and_clear` would panic here, so hop off.
            let handle = self.registration.pool.handle.clone();
            handle.spawn(async move { self.reply(outcome) });
            return;
        }
        let tag = &self.tag;
        let _ = self.tag_env.send_and_clear(&self.pid, |env| {
            let reference = tag.load(env);
            // A panic while building the term must still give the caller its one reply.
            catch_unwind(AssertUnwindSafe(|| reply_message(env, reference, &outcome)))
                .unwrap_or_else(|_| {
                    let reason =
                        grpc_reason(env, "internal", "snakepit: failed to encode the result");
                    (atoms::snakepit_reply(), reference, (atom::error(), reason)).encode(env)
                })
        });
    }

    fn chunk(&mut self, chunk: Chunk) -> bool {
        if is_scheduler_thread() {
            return false;
        }
        let (tag_env, tag) = (&self.tag_env, &self.tag);
        let env = self.chunk_env.get_or_insert_with(OwnedEnv::new);
        env.send_and_clear(&self.pid, |env| {
            let reference = tag_env.run(|t| tag.load(t).in_env(env));
            if let Some(etf) = chunk_etf(&chunk) {
                return (
                    atoms::snakepit_chunk_etf(),
                    reference,
                    bytes_to_term(env, &etf),
                )
                    .encode(env);
            }
            let metadata: Vec<(Term, Term)> = chunk
                .metadata
                .iter()
                .map(|(k, v)| {
                    (
                        bytes_to_term(env, k.as_bytes()),
                        bytes_to_term(env, v.as_bytes()),
                    )
                })
                .collect();
            let metadata =
                Term::map_from_pairs(env, &metadata).unwrap_or_else(|_| Term::map_new(env));
            (
                atoms::snakepit_chunk(),
                reference,
                payload_to_term(env, &chunk.payload),
                chunk.is_final,
                metadata,
            )
                .encode(env)
        })
        .is_ok()
    }
}

/// `nil` | decoded JSON | `{:binary, bytes}` (Elixir builds upstream's callback map from it).
fn payload_to_term<'a>(env: Env<'a>, payload: &ChunkPayload) -> Term<'a> {
    match payload {
        ChunkPayload::Empty => atom::nil().encode(env),
        ChunkPayload::Json(v) => value_to_term(env, v),
        ChunkPayload::Raw(bytes) => (atoms::binary(), bytes_to_term(env, bytes)).encode(env),
    }
}

/// `{payload, is_final, metadata}` in external format when it holds a map too big to build here.
fn chunk_etf(chunk: &Chunk) -> Option<Vec<u8>> {
    let large_payload = matches!(&chunk.payload, ChunkPayload::Json(v) if has_large_map(v));
    if !large_payload && chunk.metadata.len() <= MAX_FLATMAP_KEYS {
        return None;
    }
    let mut w = EtfWriter::new();
    w.tuple(3);
    match &chunk.payload {
        ChunkPayload::Empty => w.atom("nil"),
        ChunkPayload::Json(v) => w.value(v),
        ChunkPayload::Raw(bytes) => w.tuple(2).atom("binary").binary(bytes),
    };
    w.boolean(chunk.is_final);
    let metadata: Vec<(String, Value)> = chunk
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::str(v.as_str())))
        .collect();
    w.value(&Value::Map(metadata));
    Some(w.finish())
}

/// The reply body (`{:ok, term}` / `{:error, reason}`) in external format when it holds a map
/// too big to build here.
fn outcome_etf(outcome: &Outcome) -> Option<Vec<u8>> {
    let mut w = EtfWriter::new();
    match outcome {
        Outcome::Ok(ToolResult::Value(v)) if has_large_map(v) => {
            w.tuple(2).atom("ok").value(v);
        }
        Outcome::Ok(ToolResult::Binary {
            bytes,
            meta: Some(meta),
        }) if has_large_map(meta) => {
            w.tuple(2)
                .atom("ok")
                .tuple(3)
                .atom("binary")
                .binary(bytes)
                .value(meta);
        }
        Outcome::Error(ErrorReason::Python(payload)) if has_large_map(payload) => {
            w.tuple(2)
                .atom("error")
                .tuple(2)
                .atom("python")
                .value(payload);
        }
        _ => return None,
    }
    Some(w.finish())
}

fn reply_message<'a>(env: Env<'a>, reference: Term<'a>, outcome: &Outcome) -> Term<'a> {
    if let Some(etf) = outcome_etf(outcome) {
        let body = (atoms::etf(), bytes_to_term(env, &etf));
        return (atoms::snakepit_reply(), reference, body).encode(env);
    }
    let body = match outcome {
        Outcome::Ok(ToolResult::Value(v)) => (atom::ok(), value_to_term(env, v)).encode(env),
        Outcome::Ok(ToolResult::Binary { bytes, meta: None }) => {
            (atom::ok(), (atoms::binary(), bytes_to_term(env, bytes))).encode(env)
        }
        Outcome::Ok(ToolResult::Binary {
            bytes,
            meta: Some(meta),
        }) => (
            atom::ok(),
            (
                atoms::binary(),
                bytes_to_term(env, bytes),
                value_to_term(env, meta),
            ),
        )
            .encode(env),
        Outcome::Done => atoms::done().encode(env),
        Outcome::Error(reason) => (atom::error(), reason_to_term(env, reason)).encode(env),
    };
    (atoms::snakepit_reply(), reference, body).encode(env)
}

/// The `reason` term of ARCHITECTURE.md for an engine error.
pub fn reason_to_term<'a>(env: Env<'a>, reason: &ErrorReason) -> Term<'a> {
    match reason {
        ErrorReason::Pool(r) => pool_reason(env, *r),
        ErrorReason::Python(payload) => (atoms::python(), value_to_term(env, payload)).encode(env),
        ErrorReason::Grpc { code, message } => grpc_reason(env, code, message),
        ErrorReason::InvalidResult(e) => (
            atoms::invalid_parameter(),
            e.path.as_str(),
            e.message.as_str(),
        )
            .encode(env),
        ErrorReason::WorkerExit { worker, reason } => {
            let reason = match reason {
                // `pool_remove_worker` stores the caller's reason term in external format.
                Value::Bytes(etf) => env
                    .binary_to_term(etf)
                    .map(|(t, _)| t)
                    .unwrap_or_else(|| atom::nil().encode(env)),
                other => value_to_term(env, other),
            };
            (
                atoms::worker_exit(),
                bytes_to_term(env, worker.as_bytes()),
                reason,
            )
                .encode(env)
        }
    }
}

/// `{:pool, atom}`.
pub fn pool_reason(env: Env<'_>, reason: RejectReason) -> Term<'_> {
    (atoms::pool(), atom_named(env, reason.as_str())).encode(env)
}

/// `{:grpc, code_atom, message}`.
fn grpc_reason<'a>(env: Env<'a>, code: &str, message: &str) -> Term<'a> {
    (atoms::grpc(), atom_named(env, code), message).encode(env)
}

/// An atom from a fixed vocabulary (reject reasons, gRPC code names).
fn atom_named<'a>(env: Env<'a>, name: &str) -> Term<'a> {
    Atom::from_str(env, name)
        .map(|a| a.encode(env))
        .unwrap_or_else(|_| name.encode(env))
}

/// Sends worker-level events to the pool owner.
pub struct OwnerEvents {
    pub owner: LocalPid,
    pub handle: Handle,
}

impl PoolEvents for OwnerEvents {
    fn recycle_worker(&self, worker: &str) {
        let owner = self.owner;
        let worker = worker.to_owned();
        let send = move || {
            let mut env = OwnedEnv::new();
            let _ = env.send_and_clear(&owner, |env| {
                let event = (
                    atoms::recycle_worker(),
                    bytes_to_term(env, worker.as_bytes()),
                );
                (atoms::snakepit_pool_event(), event).encode(env)
            });
        };
        if is_scheduler_thread() {
            self.handle.spawn(async move { send() });
        } else {
            send();
        }
    }
}
