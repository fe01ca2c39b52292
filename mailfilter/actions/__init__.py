"""What happens to a message after the verdict: reinject, quarantine, report."""
