//! Thin NIF adapter over `snakepit_core`.
rustler::init!("Elixir.Snakepit.Native");
