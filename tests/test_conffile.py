"""The package's conffile (debian/mailfilter.toml) is `mailfilter config --defaults` with every key commented."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from mailfilter.cli import cli

CONFFILE = Path(__file__).resolve().parent.parent / "debian" / "mailfilter.toml"


def test_the_conffile_is_every_default_commented_out():
    defaults = CliRunner().invoke(cli, ["config", "--defaults"]).output
    commented = "".join(re.sub(r"^([a-z_]+ = |\[)", r"# \1", line) + "\n" for line in defaults.splitlines())
    text = CONFFILE.read_text()
    assert text.endswith(commented), "regenerate debian/mailfilter.toml (see the command in its first lines)"
    assert all(line.startswith("#") or not line.strip() for line in text.splitlines())
