"""`mailfilter learn spam|ham` against a real spamd with a Bayes database of its own (TELL), and its errors."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import bayes
import pytest
from click.testing import CliRunner

import corpus
from conftest import free_tcp_port

pytestmark = pytest.mark.daemons


@pytest.fixture(scope="module")
def bayes_spamd():
    """A private spamd with Bayes on and TELL allowed (what scripts/lab runs); its state dict. Its folder is not
    under pytest's root-only one: spamd's children (debian-spamd) write the Bayes database there."""
    import daemons

    run = Path(tempfile.mkdtemp(prefix="mailfilter-learn-"))
    run.chmod(0o755)
    state = daemons.start(run, only="spamd", bayes=True)
    yield state, run
    daemons.stop(run)
    shutil.rmtree(run, ignore_errors=True)


def counts(run) -> dict[str, int]:
    return bayes.counts(run / "bayes" / "bayes")


def learn(make_config, spamd: dict, *args: str, stdin: bytes = b""):
    from mailfilter.cli import cli

    path = make_config(spamd={"host": spamd["spamd_host"], "port": spamd["spamd_port"], "timeout": 30})
    return CliRunner().invoke(cli, ["--config", path, "learn", *args], input=stdin)


def test_spam_then_ham_changes_the_bayes_counts(make_config, bayes_spamd, tmp_path):
    spamd, run = bayes_spamd
    message = tmp_path / "moved.eml"
    message.write_bytes(corpus.clean())
    before = counts(run)
    result = learn(make_config, spamd, "spam", str(message))
    assert result.exit_code == 0 and result.output == f"{message}: spam: learnt\n", result.output
    assert counts(run) == {"nspam": before["nspam"] + 1, "nham": before["nham"]}
    result = learn(make_config, spamd, "ham", stdin=message.read_bytes())  # from stdin, as IMAPSieve gives it
    assert result.exit_code == 0, result.output
    assert counts(run) == {"nspam": before["nspam"], "nham": before["nham"] + 1}  # unlearnt as spam, learnt as ham


def test_an_unreadable_or_empty_file_is_a_clear_error_and_the_others_are_still_told(make_config, bayes_spamd, tmp_path):
    spamd, run = bayes_spamd
    good, empty = tmp_path / "good.eml", tmp_path / "empty.eml"
    good.write_bytes(corpus.gtube())
    empty.write_bytes(b"\n")
    before = counts(run)
    result = learn(make_config, spamd, "spam", str(tmp_path / "missing.eml"), str(empty), str(good))
    assert result.exit_code == 2
    assert "missing.eml: cannot read it: No such file or directory" in result.output and "empty.eml: empty, not a message" in result.output
    assert counts(run)["nspam"] == before["nspam"] + 1


def test_spamd_down_is_a_clear_error(make_config):
    result = learn(make_config, {"spamd_host": "127.0.0.1", "spamd_port": free_tcp_port()}, "spam", stdin=corpus.clean())
    assert result.exit_code == 2 and "did not answer" in result.output


def test_a_class_other_than_spam_or_ham_is_refused(make_config, bayes_spamd):
    spamd, _run = bayes_spamd
    result = learn(make_config, spamd, "junk", stdin=corpus.clean())
    assert result.exit_code == 2 and "'junk' is not one of 'spam', 'ham'" in result.output
