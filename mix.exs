# The cargo compiler must exist before Mix resolves `compilers:`; a module under lib/ is not
# compiled yet at that point, so load it from mix/ here.
Code.require_file("mix/cargo_compiler.exs", __DIR__)

defmodule Snakepit.MixProject do
  use Mix.Project

  @version "0.13.0"

  def project do
    [
      app: :snakepit,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:cargo] ++ Mix.compilers(),
      cargo_crates: [snakepit_nif: [package: "snakepit_nif", profile: :release]],
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      name: "Snakepit",
      description: "Python worker pool with a Rust NIF scheduler (drop-in for Snakepit)"
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {Snakepit.Application, []}
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
