"""`mailfilter scan FILE...`: the pipeline on files, for people at a terminal. Nothing is delivered or held."""

from __future__ import annotations

import json

from .. import pipeline
from ..config import Config
from ..exitcodes import clamscan_code_text
from ..message import printable
from ..model import SpamReport, SpamSkipped, Verdict, VirusReport
from ..record import dataclass
from ..spool import Spool

# scan's own exit statuses (a terminal tool, not pipe(8)).
EXIT_CLEAN, EXIT_FOUND, EXIT_ERROR = 0, 1, 2
ERROR_CODE = 2  # clamscan-style status for a scanner error


@dataclass(frozen=True)
class FileResult:
    file: str
    verdict: Verdict
    record: dict


def scan_file(path: str, config: Config) -> FileResult:
    try:
        with open(path, "rb") as fh:
            spool = Spool()
            spool.fill(fh)
    except OSError as exc:
        record = {"file": path, "verdict": Verdict.ERROR.value, "error": f"cannot read: {exc.strerror or exc}"}
        return FileResult(path, Verdict.ERROR, record)
    with spool:
        outcome = pipeline.run(spool, config)
    return FileResult(path, outcome.decision.verdict, to_record(path, outcome))


def to_record(path: str, outcome: pipeline.Outcome) -> dict:
    spam, virus, decision = outcome.results.spam, outcome.results.virus, outcome.decision
    record: dict = {"file": path, "verdict": decision.verdict.value, "action": decision.action.value}
    if isinstance(spam, SpamReport):
        record["spam"] = {"score": spam.score, "threshold": spam.threshold, "tests": list(spam.tests)}
        if spam.truncated:
            record["spam"]["truncated"] = {"scored": spam.truncated[0], "size": spam.truncated[1]}
    elif isinstance(spam, SpamSkipped):
        record["spam"] = {"score": None, "threshold": None, "tests": [], "skipped": spam.reason}
    else:
        record["spam"] = {"score": None, "threshold": None, "tests": [], "error": spam.describe()}
    if isinstance(virus, VirusReport):
        record["virus"] = {"names": list(virus.names), "code": virus.code, "text": clamscan_code_text(virus.code)}
        record["virus"]["unscannable"] = list(virus.unscannable)
    else:
        code = virus.code if virus.code is not None else ERROR_CODE
        record["virus"] = {"names": [], "code": code, "text": clamscan_code_text(code), "error": virus.describe(), "unscannable": []}
    attachments = outcome.results.attachments
    record["banned"] = [{"part": b.part, "type": b.type, "reason": b.reason} for b in attachments.banned] if attachments else []
    record["encrypted"] = list(attachments.encrypted) if attachments else []
    record["uninspected"] = list(attachments.uninspected) if attachments else []
    record["errors"] = [f.describe() for f in outcome.results.failures]
    record["headers"] = [[name, value] for name, value in decision.headers]
    return record


def human(result: FileResult) -> str:
    r = result.record
    lines = [f"{printable(result.file)}: {r['verdict'].upper()}"]
    if "error" in r:
        lines.append(f"  error: {r['error']}")
        return "\n".join(lines)
    spam, virus = r["spam"], r["virus"]
    if spam.get("score") is not None:
        lines.append(f"  spam:    {spam['score']:.1f} / {spam['threshold']:.1f}  {','.join(spam['tests']) or '-'}")
    else:
        lines.append(f"  spam:    {spam.get('skipped') or spam.get('error')}")
    lines.append(f"  virus:   {', '.join(virus['names']) or virus['text']}" + (f" ({virus['error']})" if "error" in virus else ""))
    lines.extend(f"  unscannable: {printable(reason, 300)}" for reason in virus.get("unscannable", ()))
    lines.extend(f"  banned:  {printable(b['part'], 200)} ({b['type'] or '?'}): {b['reason']}" for b in r.get("banned", ()))
    lines.extend(f"  encrypted: {printable(name, 200)}" for name in r.get("encrypted", ()))
    lines.extend(f"  not inspected: {printable(why, 300)}" for why in r.get("uninspected", ()))
    lines.append(f"  action:  {r['action']}")
    lines.extend(f"  {name}: {value}" for name, value in r["headers"])
    return "\n".join(lines)


def run(paths: list[str], config: Config, as_json: bool, echo) -> int:
    status = EXIT_CLEAN
    for path in paths:
        result = scan_file(path, config)
        echo(json.dumps(result.record, sort_keys=True) if as_json else human(result))
        if result.verdict is Verdict.ERROR:
            status = EXIT_ERROR
        elif result.verdict in (Verdict.SPAM, Verdict.VIRUS, Verdict.UNSCANNABLE, Verdict.BANNED) and status == EXIT_CLEAN:
            status = EXIT_FOUND
    return status
