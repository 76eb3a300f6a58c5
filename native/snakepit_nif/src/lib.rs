//! Thin rustler NIF over `snakepit_core` (module `Snakepit.Native`).
//!
//! Each NIF decodes its arguments, makes one engine call and encodes the answer; none blocks.
//! Results reach callers as messages sent from tokio threads (see `reply`), and caller deaths are
//! seen through monitors owned by the pool resource (see `pool`).

mod atoms;
mod json;
mod nifs;
mod options;
mod pool;
mod reply;
mod runtime;
mod term_codec;

rustler::init!("Elixir.Snakepit.Native");
