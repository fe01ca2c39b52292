"""CLI commands that are more than a few lines: each module holds one click command or group."""
