"""Test messages, built at run time. The EICAR test string is never stored in plain form.

Used by the test suite and by scripts/demo to write samples/.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

TESTFILES = "/usr/share/clamav-testfiles"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def eicar() -> bytes:
    """The 68-byte EICAR anti-virus test file, assembled from reversed pieces."""
    pieces = ["*H+H$!ELIF-TSET", "-SURIVITNA-DRADNATS-RACIE$}7)CC7)^P(45XZP\\4[PA@%P!O5X"]
    return "".join(p[::-1] for p in reversed(pieces)).encode("ascii")


def _base(subject: str, sender: str = "alice@example.org", to: str = "bob@example.net") -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Fri, 27 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{hashlib.sha256(subject.encode()).hexdigest()[:16]}@example.org>"
    msg["Received"] = "from mx.example.org (mx.example.org [192.0.2.1]) by mail.example.net with ESMTP id 4F2A1C"
    return msg


def _lf(msg: EmailMessage) -> bytes:
    # Postfix pipe(8) hands over LF line endings.
    return msg.as_bytes().replace(b"\r\n", b"\n")


def clean() -> bytes:
    msg = _base("Lunch on Friday")
    msg.set_content("Hi Bob,\n\nshall we have lunch on Friday at noon? The usual place.\n\nAlice\n")
    return _lf(msg)


def gtube() -> bytes:
    msg = _base("Cheap watches, act now")
    msg.set_content(f"This is the GTUBE, the generic test for unsolicited bulk email:\n\n{GTUBE}\n")
    return _lf(msg)


def with_attachment(data: bytes, filename: str, subject: str = "Invoice attached") -> bytes:
    msg = _base(subject)
    msg.set_content("Please find the document attached.\n")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return _lf(msg)


def eicar_attached() -> bytes:
    return with_attachment(eicar(), "eicar.com", "EICAR in base64")


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def eicar_in_zip() -> bytes:
    return with_attachment(zipped({"readme.com": eicar()}), "documents.zip", "EICAR in a zip")


def testfile_attached(name: str = "clam.exe") -> bytes:
    with open(f"{TESTFILES}/{name}", "rb") as fh:
        return with_attachment(fh.read(), name, f"clamav-testfiles {name}")


def raw_8bit_subject() -> bytes:
    return (
        b"From: alice@example.org\nTo: bob@example.net\n"
        b"Subject: Gr\xfc\xdfe aus K\xf6ln \xe2\x82\xac \xff\xfe\n"
        b"Message-ID: <8bit@example.org>\n\nBody with 8-bit \xe9t\xe9.\n"
    )


def spoofed_headers() -> bytes:
    return (
        b"X-Spam-Flag: NO\nX-Spam-Score: -100.0\nX-Spam-Status: No, score=-100.0 required=5.0\n"
        b"X-Virus-Scanned: ClamAV using mailfilter\nX-Virus-Status: Clean\n"
        b"x-spam-level: \nX-Virus-Status:\n  Clean, folded over two lines\n"
        b"From: mallory@example.org\nTo: bob@example.net\nSubject: trust me\n\n"
        b"X-Spam-Flag: NO  <- this line is body text and must stay\n"
    )


def malformed_mime() -> bytes:
    return (
        b"From: alice@example.org\nTo: bob@example.net\nSubject: broken\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="never-closed"\n\n'
        b"--never-closed\nContent-Type: text/plain; charset=x-unknown-charset\n"
        b"Content-Transfer-Encoding: base64\n\n!!!not base64!!!\n"
        b"--wrong-boundary\nContent-Type: application/octet-stream\n\n\x00\x01\x02"
    )


def injecting_subject() -> bytes:
    """An encoded-word Subject that decodes to a CRLF and a forged header line."""
    evil = base64.b64encode(b"hello\r\nBcc: victim@example.com\r\n\r\nforged body").decode()
    return (
        f"From: alice@example.org\nTo: bob@example.net\nSubject: =?utf-8?b?{evil}?=\n"
        f"Received: from evil\r\n\tX-Injected: yes\nMessage-ID: <inj@example.org>\n\nbody\n"
    ).encode()


ALL = {
    "clean": clean,
    "gtube": gtube,
    "eicar-base64": eicar_attached,
    "eicar-zip": eicar_in_zip,
    "clam-exe": testfile_attached,
    "8bit-subject": raw_8bit_subject,
    "spoofed-headers": spoofed_headers,
    "malformed-mime": malformed_mime,
}


def hostile() -> dict[str, bytes]:
    """Malformed or abusive inputs that must get a verdict or a deferral, never a crash."""
    nested = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(300))
    return {
        "empty": b"",
        "headers-only-no-newline": b"Subject: x\nFrom: a@b",
        "nul-bytes-in-header": b"Subject: a\x00b\nFrom: \x00\n\nbody\x00\n",
        "bare-cr": b"Subject: bare\rcr\rlines\r\rbody\r",
        "crlf-and-lf-mixed": b"Subject: mixed\r\nFrom: a@b\n\r\nbody\r\n",
        "megabyte-header-line": b"Subject: " + b"A" * 1_000_000 + b"\n\nbody\n",
        "many-headers": b"".join(b"X-H%d: v\n" % i for i in range(10_000)) + b"\nbody\n",
        "deep-mime-nesting": b"From: a@b\nMIME-Version: 1.0\n" + nested + b"deep\n",
        "binary-garbage": bytes(range(256)) * 64,
        "injecting-subject": injecting_subject(),
    }
