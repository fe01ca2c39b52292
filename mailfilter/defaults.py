"""Defaults the pipe client reads on every message, in a module without imports; config.py uses the same."""

CONFIG_ENV = "MAILFILTER_CONFIG"
CONFIG_PATH = "/etc/mailfilter/mailfilter.toml"
WORKER_SOCKET = "/run/mailfilter-pipe/worker.sock"
PIPE_DEADLINE = 300.0  # seconds
