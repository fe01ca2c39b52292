"""Scan samples/ with the private spamd and clamd and check each verdict.

The virus sample is written at run time (the EICAR test string is never stored in the repository).
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

import corpus  # noqa: E402
import daemons  # noqa: E402

EXPECTED = {"clean.eml": "clean", "gtube-spam.eml": "spam", "virus-eicar.eml": "virus"}


def main() -> int:
    state = daemons.state()
    build = ROOT / "build"
    build.mkdir(exist_ok=True)
    config = build / "demo.toml"
    config.write_text(
        f'[spamd]\nhost = "{state["spamd_host"]}"\nport = {state["spamd_port"]}\n'
        f'[clamd]\nsocket = "{state["clamd_socket"]}"\n'
        f'[quarantine]\ndir = "{build / "quarantine"}"\n'
        f'[report]\nstate_dir = "{build / "state"}"\n'
    )
    samples = ROOT / "samples"
    (samples / "virus-eicar.eml").write_bytes(corpus.eicar_attached())
    files = [str(samples / name) for name in EXPECTED]
    mailfilter = [str(ROOT / ".venv" / "bin" / "mailfilter"), "--config", str(config), "scan"]

    print(f"$ mailfilter --config {config.relative_to(ROOT)} scan samples/*.eml", flush=True)
    subprocess.run([*mailfilter, *files], check=False)
    records = [
        json.loads(line)
        for line in subprocess.run([*mailfilter, "--json", *files], capture_output=True, check=False, text=True).stdout.splitlines()
    ]
    wrong = [r for r in records if EXPECTED[Path(r["file"]).name] != r["verdict"]]
    for r in wrong:
        print(f"demo: {Path(r['file']).name}: expected {EXPECTED[Path(r['file']).name]}, got {r['verdict']}", file=sys.stderr)
    if wrong or len(records) != len(EXPECTED):
        return 1
    print("demo: every sample got the expected verdict (clean, spam, virus)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
