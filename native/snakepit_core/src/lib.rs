//! Core of the Snakepit pool, independent of the BEAM.
//!
//! - [`scheduler`]: the pure checkout / queue / session-affinity state machine (events in, actions out,
//!   clock passed in).
//! - [`codec`]: the `Value` tree shared with the NIF and its JSON wire form.
//! - [`transport`]: the tonic client for one Python worker.
//! - [`engine`]: drives the scheduler, the transport and the timers on a tokio runtime.

pub mod codec;
pub mod engine;
pub mod scheduler;
pub mod transport;

/// Generated protobuf and gRPC types for `snakepit.bridge`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("snakepit.bridge");
}
