"""mailfilter: SpamAssassin and ClamAV for Postfix, as a pipe(8) filter, a milter and a CLI."""

__version__ = "0.1.0"
