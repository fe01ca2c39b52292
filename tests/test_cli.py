"""The CLI: every command has help and is documented in the README; scan's exit statuses and JSON."""

import json
import re

import pytest
from click.testing import CliRunner

from mailfilter.cli import cli

import corpus
from conftest import ROOT

COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and len(result.output) > 100


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name):
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"mailfilter (\[?--config[^\n`]*)?{name}\b", readme), f"README does not show `mailfilter {name}`"


def test_config_check_names_the_bad_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[clamd]\nbackend = 'nope'\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "config"])
    assert result.exit_code == 1 and "[clamd] backend: must be one of" in result.output


def test_config_defaults_lists_every_section():
    result = CliRunner().invoke(cli, ["config", "--defaults"])
    assert result.exit_code == 0 and "[spamd]" in result.output and "[report]" in result.output


def test_scan_unreadable_file_is_exit_2(tmp_path, make_config):
    result = CliRunner().invoke(cli, ["--config", make_config(), "scan", "--json", str(tmp_path / "missing.eml")])
    assert result.exit_code == 2
    assert json.loads(result.output)["verdict"] == "error"


@pytest.mark.daemons
def test_scan_json_and_exit_statuses(tmp_path, real_config):
    files = {}
    for name in ("clean", "gtube", "eicar-base64"):
        files[name] = tmp_path / f"{name}.eml"
        files[name].write_bytes(corpus.ALL[name]())
    runner = CliRunner()
    config = real_config()
    clean = runner.invoke(cli, ["--config", config, "scan", "--json", str(files["clean"])])
    assert clean.exit_code == 0
    result = runner.invoke(cli, ["--config", config, "scan", "--json", *map(str, files.values())])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["verdict"] for r in records] == ["clean", "spam", "virus"]
    for r in records:
        assert {"file", "verdict", "spam", "virus", "headers"} <= set(r)
        assert {"score", "threshold", "tests"} <= set(r["spam"]) and {"names", "code", "text"} <= set(r["virus"])
    assert records[1]["spam"]["score"] >= 1000 and "GTUBE" in records[1]["spam"]["tests"]
    assert records[2]["virus"]["names"][0].startswith("Eicar-Test-Signature") and records[2]["virus"]["code"] == 1
    assert records[2]["virus"]["text"] == "virus(es) found"
    assert ["X-Spam-Flag", "YES"] in records[1]["headers"]
    human = runner.invoke(cli, ["--config", config, "scan", *map(str, files.values())])
    assert human.exit_code == 1 and "VIRUS" in human.output and "SPAM" in human.output


@pytest.mark.daemons
def test_scan_with_clamd_down_is_exit_2(tmp_path, real_config):
    path = tmp_path / "m.eml"
    path.write_bytes(corpus.clean())
    result = CliRunner().invoke(cli, ["--config", real_config(clamd={"socket": str(tmp_path / "none")}), "scan", "--json", str(path)])
    record = json.loads(result.output)
    assert result.exit_code == 2 and record["verdict"] == "error" and record["virus"]["code"] == 2
    assert "clamav unavailable" in record["virus"]["error"]
