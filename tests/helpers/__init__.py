"""Test helpers that are not tests: hand-built Runs, tiny checkpoints, a GGUF writer, a CDP browser."""
