"""Defaults the pipe client reads on every message, in a module without imports; config.py uses the same."""

CONFIG_ENV = "MAILFILTER_CONFIG"
CONFIG_PATH = "/etc/mailfilter/mailfilter.toml"
WORKER_SOCKET = "/run/mailfilter-pipe/worker.sock"
PIPE_DEADLINE = 300.0  # seconds


# [attachments] defaults (lowercase, no dot), the default of banned_extensions and banned_types.
# rspamd's mime_types bad_extensions (its Gmail and Outlook lists) and the scripts of its
# bad_archive_extensions, with Gmail's newer entries (app packages, disk images Windows mounts with a
# click). Left out: rspamd's Access and shell ones that legitimate mail carries (mdb, mat, mda.., pl,
# csh, ksh, pst), certificates (crt, cer), and ones that are no program (url stays: it runs one).
BANNED_EXTENSIONS: tuple[str, ...] = (
    "exe", "com", "scr", "pif", "cpl", "dll", "sys", "vxd", "msc", "gadget", "application",
    "appx", "appxbundle", "msix", "msixbundle", "msi", "msp", "mst", "msu", "diagcab", "cab", "jar", "jnlp",
    "bat", "cmd", "js", "jse", "vb", "vbe", "vbs", "wsf", "wsh", "wsc", "ws", "hta", "sct",
    "ps1", "ps1xml", "ps2", "ps2xml", "psc1", "psc2", "psd1", "psm1", "msh", "msh1", "msh2", "mshxml", "msh1xml", "msh2xml",
    "shb", "shs", "lnk", "url", "website", "scf", "inf", "ins", "isp", "reg", "settingcontent-ms", "xnk",
    "chm", "hlp", "xll", "xbap", "ade", "adp", "mde", "iso", "img", "vhd", "vhdx", "ace", "arj",
)  # fmt: skip
# What libmagic 5.44 (Debian 12) names Windows and DOS programs, installers and the texts Windows runs,
# each seen on a sample built by tests/test_attachments.py (mailfilter/attachments.py checks them), then the names other libmagic versions
# and tools give the same (Content-Type headers, shared-mime-info, Debian's mime.types).
BANNED_TYPES: tuple[str, ...] = (
    "application/x-dosexec",  # MZ for DOS, LE and LX executables, DOS COM programs
    "application/vnd.microsoft.portable-executable",  # PE32 and PE32+: .exe, .dll, .scr, .cpl, .sys
    "application/x-ms-ne-executable",  # 16-bit Windows
    "application/x-ms-w3-executable",
    "application/x-ms-w4-executable",
    "application/x-dosdriver",
    "application/x-msi",
    "application/x-ms-shortcut",  # .lnk
    "application/x-mswinurl",  # .url
    "application/x-setupscript",  # .inf
    "application/vnd.ms-htmlhelp",  # .chm
    "application/java-archive",
    "application/javascript",  # a Node.js script (libmagic names no other JavaScript)
    "text/x-msdos-batch",
    "text/x-ms-regedit",
    "text/x-ms-scf",
    "application/x-msdownload",
    "application/x-msdos-program",
    "application/x-ms-dos-executable",
)
