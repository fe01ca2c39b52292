#!/bin/sh
# The floor of the pipe path: spamc piped into clamdscan --stream -, in a shell, no temporary file, no Python.
# Arguments (the envelope) are ignored. Environment: SPAMD_HOST, SPAMD_PORT, CLAMD_CONF (clamd.conf naming its socket).
# Exit status: clamdscan's (0 clean, 1 virus found, 2 an error).
/usr/bin/spamc -d "$SPAMD_HOST" -p "$SPAMD_PORT" | /usr/bin/clamdscan --config-file="$CLAMD_CONF" --stream --no-summary - >/dev/null
