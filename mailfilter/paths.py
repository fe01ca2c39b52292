"""Default locations, in a module without imports: the pipe client reads them on every message."""

CONFIG_ENV = "MAILFILTER_CONFIG"
CONFIG_PATH = "/etc/mailfilter/mailfilter.toml"
WORKER_SOCKET = "/run/mailfilter-pipe/worker.sock"
