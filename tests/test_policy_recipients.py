"""The per-recipient policy, table-driven: [recipients."…"], [senders], banned attachments, subject tag,
bypass_spam, spamd users, and how a door with one answer carries a split out (split.py). Pure, no daemons."""

from __future__ import annotations

import math

import pytest

from mailfilter import config as configmod
from mailfilter import recipients, split
from mailfilter.config import ConfigError
from mailfilter.model import (
    Action,
    AttachmentReport,
    Banned,
    Cause,
    Envelope,
    ScanFailure,
    ScanResults,
    SenderHits,
    SpamReport,
    Verdict,
    VirusReport,
)
from mailfilter.policy import decide, plan

HAM = SpamReport(1.2, 5.0)
SPAM7 = SpamReport(7.5, 5.0, ("GTUBE",))
SPAM15 = SpamReport(15.0, 5.0, ("GTUBE",))
CLEAN = VirusReport()
EICAR = VirusReport(("Eicar-Test-Signature",), code=1)
EXE = AttachmentReport(banned=(Banned("invoice.pdf.exe", "application/x-dosexec", "hidden extension: invoice.pdf.exe"),))
LOCKED = AttachmentReport(encrypted=("secret.zip",))
UNSEEN = AttachmentReport(uninspected=("more than 1000 MIME parts: the rest not inspected",))
CLAM_DOWN = ScanFailure("clamav", Cause.UNAVAILABLE, "Connection refused")
SPAMD_DOWN = ScanFailure("spamd", Cause.UNAVAILABLE, "Connection refused")
ALLOW = SenderHits(allow="partner.example")
BLOCK = SenderHits(block="spammer.example")
BOTH = SenderHits(allow="alerts@partner.example", block="partner.example")

SITE = configmod.from_dict(
    {
        "quarantine": {"spam_score": 10},
        "policy": {"spam_reject_score": 20, "subject_tag": "[SPAM] "},
        "recipients": {
            "strict.test": {"spam_score": 5, "spam_reject_score": 12, "virus": "reject", "banned": "reject"},
            "boss@strict.test": {"spam_score": 8},  # an address's keys override its domain's, the rest stay
            "lax.test": {"subject_tag": "", "banned": "allow"},
            "Sales.Example": {"bypass_spam": True},
            "held.test": {"virus": "hold"},
        },
    }
)


def results(spam=HAM, virus=CLEAN, attachments=None, **more):
    return ScanResults(spam, virus, attachments=attachments, **more)


def rule(address: str, door: str = "pipe") -> recipients.Rule:
    return recipients.rule_for(address, recipients.base_rule(SITE, door), dict(SITE.recipients))


@pytest.mark.parametrize(
    ("address", "spam_score", "reject_score", "virus", "tag", "banned"),
    [
        ("a@strict.test", 5.0, 12.0, "reject", "[SPAM] ", "reject"),
        ("A@STRICT.TEST", 5.0, 12.0, "reject", "[SPAM] ", "reject"),  # case-insensitive
        ("boss@strict.test", 8.0, 12.0, "reject", "[SPAM] ", "reject"),  # address over domain, domain's other keys kept
        ("x@sub.strict.test", 10.0, 20.0, "quarantine", "[SPAM] ", "quarantine"),  # a subdomain only if listed itself
        ("b@lax.test", 10.0, 20.0, "quarantine", "", "allow"),
        ("c@other.test", 10.0, 20.0, "quarantine", "[SPAM] ", "quarantine"),  # no table: the global keys
        ("<a@strict.test>", 5.0, 12.0, "reject", "[SPAM] ", "reject"),
    ],
)
def test_a_recipients_rule_is_global_then_domain_then_address(address, spam_score, reject_score, virus, tag, banned):
    got = rule(address)
    assert (got.spam_score, got.spam_reject_score, got.virus, got.subject_tag, got.banned) == (
        spam_score,
        reject_score,
        virus,
        tag,
        banned,
    )


def test_the_milter_starts_from_its_own_virus_key_and_a_table_overrides_it():
    assert rule("c@other.test", "milter").virus == "reject"  # [milter] virus's default
    assert rule("a@held.test", "milter").virus == "hold"
    assert rule("a@held.test", "pipe").virus == "hold"  # the key as written; decide() makes it a quarantine


CASES = [
    # address, spam, virus, attachments, senders, door, verdict, action
    ("a@strict.test", SPAM7, CLEAN, None, SenderHits(), "pipe", Verdict.SPAM, Action.QUARANTINE),
    ("b@lax.test", SPAM7, CLEAN, None, SenderHits(), "pipe", Verdict.SPAM, Action.DELIVER),
    ("a@strict.test", SPAM15, CLEAN, None, SenderHits(), "pipe", Verdict.SPAM, Action.REJECT),
    ("b@lax.test", SPAM15, CLEAN, None, SenderHits(), "pipe", Verdict.SPAM, Action.QUARANTINE),
    ("a@strict.test", HAM, EICAR, None, SenderHits(), "pipe", Verdict.VIRUS, Action.REJECT),
    ("b@lax.test", HAM, EICAR, None, SenderHits(), "pipe", Verdict.VIRUS, Action.QUARANTINE),
    ("a@held.test", HAM, EICAR, None, SenderHits(), "milter", Verdict.VIRUS, Action.HOLD),
    ("a@held.test", HAM, EICAR, None, SenderHits(), "pipe", Verdict.VIRUS, Action.QUARANTINE),  # hold is the milter's
    # allow never lets a virus or a banned file in, only ever affects spam and block
    ("b@lax.test", SPAM15, EICAR, None, ALLOW, "pipe", Verdict.VIRUS, Action.QUARANTINE),
    ("c@other.test", HAM, CLEAN, EXE, ALLOW, "pipe", Verdict.BANNED, Action.QUARANTINE),
    ("c@other.test", SPAM15, CLEAN, None, ALLOW, "pipe", Verdict.CLEAN, Action.DELIVER),
    ("c@other.test", SPAM15, CLEAN, None, BOTH, "pipe", Verdict.CLEAN, Action.DELIVER),  # allow wins over block
    # block: spam at the reject score; quarantined where nothing rejects
    ("c@other.test", HAM, CLEAN, None, BLOCK, "pipe", Verdict.SPAM, Action.REJECT),
    ("b@lax.test", HAM, EICAR, None, BLOCK, "pipe", Verdict.VIRUS, Action.QUARANTINE),  # virus before block
    ("c@other.test", HAM, CLEAN, EXE, BLOCK, "pipe", Verdict.BANNED, Action.QUARANTINE),  # banned before block
    # banned: per recipient; after a virus, before unscannable and spam
    ("a@strict.test", HAM, CLEAN, EXE, SenderHits(), "pipe", Verdict.BANNED, Action.REJECT),
    ("b@lax.test", HAM, CLEAN, EXE, SenderHits(), "pipe", Verdict.CLEAN, Action.DELIVER),
    ("c@other.test", HAM, EICAR, EXE, SenderHits(), "pipe", Verdict.VIRUS, Action.QUARANTINE),
    ("c@other.test", SPAM15, CLEAN, EXE, SenderHits(), "pipe", Verdict.BANNED, Action.QUARANTINE),
    # ClamAV down: deferred, never held as banned (it may be a virus, and a banned entry can be released)
    ("c@other.test", HAM, CLAM_DOWN, EXE, SenderHits(), "pipe", Verdict.ERROR, Action.TEMPFAIL),
    ("a@strict.test", HAM, CLAM_DOWN, EXE, SenderHits(), "milter", Verdict.ERROR, Action.TEMPFAIL),
    ("c@other.test", SPAMD_DOWN, CLEAN, EXE, SenderHits(), "pipe", Verdict.BANNED, Action.QUARANTINE),
    ("c@other.test", HAM, CLEAN, LOCKED, SenderHits(), "pipe", Verdict.BANNED, Action.QUARANTINE),
    # what the attachment check could not see is said (header, warning), not held, by default
    ("c@other.test", HAM, CLEAN, UNSEEN, SenderHits(), "pipe", Verdict.CLEAN, Action.DELIVER),
    ("c@other.test", SPAM15, CLEAN, UNSEEN, SenderHits(), "pipe", Verdict.SPAM, Action.QUARANTINE),
    ("b@lax.test", HAM, CLEAN, UNSEEN, SenderHits(), "pipe", Verdict.CLEAN, Action.DELIVER),
    # bypass_spam: spamd's answer is not used for them (the virus scan always is)
    ("x@sales.example", SPAM15, CLEAN, None, SenderHits(), "pipe", Verdict.CLEAN, Action.DELIVER),
    ("x@sales.example", HAM, EICAR, None, SenderHits(), "pipe", Verdict.VIRUS, Action.QUARANTINE),
    ("x@sales.example", HAM, CLEAN, None, BLOCK, "pipe", Verdict.SPAM, Action.REJECT),  # a blocked sender is no spam score
]


@pytest.mark.parametrize(("address", "spam", "virus", "attachments", "senders", "door", "verdict", "action"), CASES)
def test_the_decision_for_one_recipient(address, spam, virus, attachments, senders, door, verdict, action):
    decision = decide(results(spam, virus, attachments), SITE, rule(address, door), door, senders)
    assert (decision.verdict, decision.action) == (verdict, action)


def test_the_subject_tag_is_for_delivered_spam_only_and_follows_the_rule():
    assert decide(results(SpamReport(6.0, 5.0)), SITE, rule("c@other.test")).subject_tag == "[SPAM] "
    assert decide(results(SpamReport(6.0, 5.0)), SITE, rule("b@lax.test")).subject_tag == ""
    assert decide(results(HAM), SITE, rule("c@other.test")).subject_tag == ""
    assert decide(results(SpamReport(6.0, 5.0)), SITE, rule("c@other.test"), senders=ALLOW).subject_tag == ""


def test_a_sender_hit_is_named_in_the_decision():
    assert decide(results(SPAM15), SITE, rule("c@other.test"), senders=ALLOW).sender_rule == "allow partner.example"
    assert decide(results(HAM), SITE, rule("c@other.test"), senders=BLOCK).sender_rule == "block spammer.example"
    blocked = decide(results(HAM), configmod.from_dict({}), None, senders=BLOCK)  # no reject score anywhere
    assert (blocked.action, blocked.sender_rule) == (Action.QUARANTINE, "block spammer.example")


def test_a_banned_attachment_is_not_a_virus_and_says_which_part_and_why():
    decision = decide(results(HAM, CLEAN, EXE), SITE, rule("a@strict.test"))
    assert dict(decision.headers)["X-Virus-Status"] == "Clean"
    assert "invoice.pdf.exe" in decision.dsn.text and "hidden extension" in decision.dsn.text


def test_what_the_attachment_check_could_not_see_is_said_or_held_as_unscannable():
    said = decide(results(HAM, CLEAN, UNSEEN), SITE, rule("c@other.test"))
    assert dict(said.headers)["X-Mailfilter-Uninspected"].startswith("more than 1000 MIME parts")
    assert any("attachments not all inspected" in w for w in said.warnings)
    assert "X-Mailfilter-Uninspected" not in dict(decide(results(HAM, CLEAN, UNSEEN), SITE, rule("b@lax.test")).headers)
    strict = configmod.from_dict({"attachments": {"uninspected": "quarantine"}})
    held = decide(results(HAM, CLEAN, UNSEEN), strict)
    assert (held.verdict, held.action) == (Verdict.UNSCANNABLE, Action.QUARANTINE)


def test_each_recipient_is_scored_as_its_spamd_user():
    config = configmod.from_dict({"quarantine": {"spam_score": 5}, "recipients": {"a.test": {"spamd_user": "alice"}}})
    scored = results(HAM, spam_users=(("alice", SPAM7),))
    groups = plan(Envelope("s@x.test", ("u@a.test", "v@b.test")), scored, config)
    assert [(g.recipients, g.decision.action) for g in groups] == [(("u@a.test",), Action.QUARANTINE), (("v@b.test",), Action.DELIVER)]


def test_a_held_group_keeps_the_score_of_its_own_spamd_user():
    from mailfilter.actions import quarantine
    from mailfilter.spool import Spool

    config = configmod.from_dict({"quarantine": {"spam_score": 5}, "recipients": {"a.test": {"spamd_user": "alice"}}})
    scored = results(HAM, spam_users=(("alice", SPAM7),))
    envelope = Envelope("s@x.test", ("v@b.test", "u@a.test"))
    held, delivered = sorted(plan(envelope, scored, config), key=lambda g: g.decision.action != Action.QUARANTINE)
    with Spool.of(b"Subject: hi\n\nbody\n") as spool:
        meta = quarantine.describe(Envelope("s@x.test", held.recipients), spool, scored, held.decision)
    assert (held.recipients, meta["spam_score"], meta["spam_tests"]) == (("u@a.test",), 7.5, ["GTUBE"])
    assert delivered.decision.action == Action.DELIVER


def test_a_failure_of_one_spamd_user_defers_only_by_that_users_on_error():
    down = ScanFailure("spamd", Cause.UNAVAILABLE, "refused")
    config = configmod.from_dict({"recipients": {"a.test": {"spamd_user": "alice"}}})
    groups = plan(Envelope("s@x.test", ("u@a.test", "v@b.test")), results(HAM, spam_users=(("alice", down),)), config)
    assert [g.decision.action for g in groups] == [Action.TEMPFAIL, Action.DELIVER]


GTUBE_SPLIT = Envelope("s@x.test", ("a@strict.test", "b@lax.test", "c@lax.test"), "4F2A1C")


def test_recipients_with_the_same_decision_share_a_group_in_order():
    groups = plan(GTUBE_SPLIT, results(SPAM7), SITE)
    assert [(g.recipients, g.decision.action) for g in groups] == [
        (("a@strict.test",), Action.QUARANTINE),
        (("b@lax.test", "c@lax.test"), Action.DELIVER),
    ]
    assert len(plan(GTUBE_SPLIT, results(HAM), SITE)) == 1


@pytest.mark.parametrize(
    ("actions", "carried"),
    [
        ((Action.DELIVER,), (Action.DELIVER,)),
        ((Action.QUARANTINE, Action.DELIVER), (Action.QUARANTINE, Action.DELIVER)),
        ((Action.REJECT, Action.DELIVER), (Action.QUARANTINE, Action.DELIVER)),  # a rejecting group's copy is held
        ((Action.REJECT, Action.QUARANTINE), (Action.QUARANTINE, Action.QUARANTINE)),
        ((Action.REJECT, Action.REJECT), (Action.REJECT,)),  # 69 only when every group rejects
        ((Action.DELIVER, Action.TEMPFAIL), (Action.TEMPFAIL,)),  # deferred as a whole, before anything is sealed
    ],
)
def test_a_door_with_one_answer_carries_the_groups_out(actions, carried):
    from mailfilter.model import Decision, Group

    groups = tuple(Group((f"r{n}@x.test",), Decision(Verdict.SPAM, action, (("X-N", str(n)),))) for n, action in enumerate(actions))
    got = split.for_one_answer(groups)
    assert tuple(g.decision.action for g in got) == carried
    assert sorted(r for g in got for r in g.recipients) == sorted(r for g in groups for r in g.recipients)
    assert all(g.decision.dsn is None for g in got if g.decision.action is Action.QUARANTINE)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"example.org": {"spam_scor": 5}}, 'recipients."example.org"] spam_scor: unknown key'),
        ({"example.org": {"virus": "drop"}}, "virus: must be one of"),
        ({"example.org": {"banned": "hold"}}, "banned: must be one of"),
        ({"example.org": {"spam_score": "high"}}, "spam_score: expected a number"),
        ({"not a domain": {"spam_score": 5}}, "not a domain or an address"),
        ({"Example.org": {}, "example.ORG": {}}, "given twice"),
        ({"example.org": 5}, "must be a table"),
        ({"example.org": {"spamd_user": "bad user"}}, "spamd_user: must be a user name"),
    ],
)
def test_a_bad_recipients_table_is_an_error_naming_it(table, error):
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace('"', '"')):
        configmod.from_dict({"recipients": table}, source="mailfilter.toml")


@pytest.mark.parametrize(
    ("section", "error"),
    [
        ({"senders": {"allow": ["not an entry!"]}}, "[senders] allow"),
        ({"attachments": {"action": "drop"}}, "[attachments] action: must be one of"),
        ({"attachments": {"banned_extensions": [".exe"]}}, "[attachments] banned_extensions"),
        ({"attachments": {"banned_types": ["exe"]}}, "[attachments] banned_types"),
        ({"policy": {"subject_tag": "a\nb"}}, "[policy] subject_tag"),
        ({"spamd": {"user": "a b"}}, "[spamd] user"),
    ],
)
def test_a_bad_new_key_is_an_error_naming_it(section, error):
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        configmod.from_dict(section, source="mailfilter.toml")


def test_the_defaults_ban_executables_by_name_and_type_and_change_nothing_else():
    config = configmod.from_dict({})
    assert {"exe", "scr", "js", "vbs", "lnk"} <= set(config.attachments.banned_extensions)
    assert "application/x-dosexec" in config.attachments.banned_types
    assert config.attachments.action == "quarantine" and config.policy.subject_tag == ""
    assert math.isinf(recipients.base_rule(config, "pipe").spam_score)


def test_carrying_out_a_split_records_each_group_before_the_next_and_skips_what_was_sealed_before():
    from mailfilter.model import Decision, Group

    groups = (
        Group(("a@x.test",), Decision(Verdict.SPAM, Action.QUARANTINE)),
        Group(("b@x.test", "c@x.test"), Decision(Verdict.SPAM, Action.DELIVER)),
    )
    envelope, log = Envelope("s@x.test", ("a@x.test", "b@x.test", "c@x.test"), "Q1"), []

    def failing(part, decision):
        if decision.action is Action.DELIVER:
            raise OSError("sendmail failed")
        return "Q-ID"

    with pytest.raises(OSError):
        split.carry(envelope, groups, {}, failing, lambda rcpts, what: log.append((rcpts, what)))
    assert log == [(("a@x.test",), "quarantined Q-ID")]  # recorded before the second group was tried
    seen = []
    done = split.carry(envelope, groups, dict((r, w) for rs, w in log for r in rs), lambda p, d: seen.append(p) or None, lambda *_: None)
    assert [p.recipients for p in seen] == [("b@x.test", "c@x.test")] and [g.recipients for _, g, _ in done] == [("b@x.test", "c@x.test")]


def test_a_split_log_that_cannot_be_written_does_not_stop_the_groups_already_sealed_or_the_next(caplog):
    """Deferring after a sealed group only because its record failed would deliver it twice on the retry."""
    from mailfilter.model import Decision, Group

    groups = (
        Group(("a@x.test",), Decision(Verdict.SPAM, Action.QUARANTINE)),
        Group(("b@x.test",), Decision(Verdict.SPAM, Action.DELIVER)),
    )
    envelope, sealed = Envelope("s@x.test", ("a@x.test", "b@x.test"), "Q2"), []

    def full(recipients, what):
        raise OSError(28, "No space left on device")

    def seal(part, decision):
        sealed.append(part.recipients)
        return "Q-ID" if decision.action is Action.QUARANTINE else None

    done = split.carry(envelope, groups, {}, seal, full)
    assert sealed == [("a@x.test",), ("b@x.test",)]
    assert [(g.recipients, qid) for _, g, qid in done] == [(("a@x.test",), "Q-ID"), (("b@x.test",), None)]
    assert "Q2: a@x.test quarantined Q-ID, but the split log cannot be written" in caplog.text


def test_the_readme_example_is_a_valid_config_and_does_what_it_says():
    import re
    import tomllib
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Per-recipient policy") :]
    example = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    config = configmod.from_dict(tomllib.loads(example), "README.md")
    base, tables = recipients.base_rule(config, "pipe"), dict(config.recipients)
    info, sales = (recipients.rule_for(a, base, tables) for a in ("info@unix.specialist.ru", "sales@unix.specialist.ru"))
    assert (info.spam_score, info.bypass_spam, sales.spam_score, sales.bypass_spam) == (6.0, True, 6.0, False)
    assert recipients.rule_for("x@shop.example", base, tables).subject_tag == "[SPAM] "
