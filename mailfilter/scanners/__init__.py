"""Scanner clients. Each turns its daemon's answer, or its failure, into a typed outcome.

Only the errors a scanner can be expected to raise (connection, timeout,
protocol, its library's own exceptions) become a ScanFailure; anything else is
a bug and reaches the door's one boundary, which defers the message.
"""
