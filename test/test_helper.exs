# Integration tests run real Python workers from the project venv; there is no mock mode.
# A missing interpreter is a setup error: fail before running anything.
python = Snakepit.TestSupport.python!()
System.put_env("SNAKEPIT_PYTHON", python)

ExUnit.start()
