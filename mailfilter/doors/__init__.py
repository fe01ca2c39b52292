"""The doors: each parses its own input, calls the pipeline, and answers in its own protocol."""
