"""List file parsers (pure): text -> (DomainIndex, ParseReport).

Formats and their semantics (written down in docs/dns.md):

* ``domains``  -- one name per line; an entry covers the name and all subdomains.
  ``#`` comments, a leading ``*.`` or ``.`` and a trailing dot are accepted.
* ``hosts``    -- ``ADDRESS NAME [NAME...]``; each name is blocked *exactly* (a hosts
  file maps exact names), localhost-style names are ignored.
* ``rpz``      -- RPZ zone file, QNAME triggers only: ``x`` covers x itself, ``*.x``
  covers names strictly below x. Actions: ``CNAME .`` NXDOMAIN, ``CNAME *.`` NODATA,
  ``CNAME rpz-passthru.`` allow, ``CNAME rpz-drop.`` REFUSED (we always answer),
  ``A``/``AAAA`` sinkhole to that address. Other triggers (rpz-ip, rpz-nsdname,
  rpz-client-ip, rpz-nsip) and CNAME rewrites to other names are counted as
  unsupported and skipped.
* ``maltrail`` -- Maltrail trail files: comments, bare domains (name and
  subdomains), ``host:port`` (the host is taken), URLs and IP addresses (skipped:
  DNS cannot block an address, and a URL trail names one path on what is often a
  compromised legitimate site).

Names are matched in A-label form: a Unicode name in a list is converted with IDNA.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from .lists import DomainIndex

_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")
_HOSTS_IGNORE = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost",
                           "ip6-localhost", "ip6-loopback", "ip6-localnet", "ip6-mcastprefix",
                           "ip6-allnodes", "ip6-allrouters", "ip6-allhosts", "0.0.0.0"})


@dataclass
class ParseReport:
    entries: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_problem: str | None = None

    def skip(self, why: str, lineno: int, line: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1
        if self.first_problem is None and why in ("invalid", "unsupported"):
            self.first_problem = f"line {lineno}: {why}: {line[:80]!r}"

    def as_dict(self) -> dict:
        return {"entries": self.entries, "skipped": dict(self.skipped), "first_problem": self.first_problem}


def domain(token: str) -> str | None:
    """A list token as a normalized A-label name, or None if it is not a domain name."""
    s = token.strip().lower().rstrip(".")
    if not s.isascii():
        try:
            s = s.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(s) > 253 or not _NAME.fullmatch(s):
        return None
    return s


def _is_ip(s: str) -> bool:
    if ":" in s:
        return True  # IPv6 (host:port was split before)
    last = s.rpartition(".")[2]
    return last.isdigit()


CHUNK = 1 << 16


def _entries(text: str, pause: float = 0.0):
    """(line number, lower-cased line, entry) for each line that is not blank or a comment;
    the entry is the line stripped, without a trailing ``# comment``. Read in chunks of
    ~64 KB (~4,000 lines, ~2 ms of work).

    A list reload runs in a thread while the event loop answers queries: between chunks
    the thread sleeps for ``pause`` seconds (0 at start-up), which hands the GIL to the
    event loop at once if it is waiting (instead of after the 5 ms switch interval) and,
    with a pause, leaves the CPU to it; no single C call is long.
    """
    i, n, base = 0, len(text), 0
    while i < n:
        j = text.find("\n", i + CHUNK)
        if j < 0:
            j = n
        lines = text[i:j].lower().splitlines()
        for k, line in enumerate(lines, base + 1):
            s = line.strip()
            if not s or s[0] == "#":
                continue
            if "#" in s:
                s = s.split("#", 1)[0].strip()
            yield k, line, s
        base += len(lines)
        i = j + 1
        time.sleep(pause)


def _add_subtree(idx: DomainIndex, rep: ParseReport, s: str, n: int, line: str) -> None:
    """One name (and everything under it) into the index; an IP or a bad name is reported."""
    s = s.rstrip(".")
    if _NAME.fullmatch(s) and len(s) <= 253:
        if _is_ip(s):
            rep.skip("ip", n, line)
        else:
            idx.subtree.add(s)
    else:
        d = domain(s) if not s.isascii() else None
        if d:
            idx.subtree.add(d)
        else:
            rep.skip("invalid", n, line)


def parse_domains(text: str, pause: float = 0.0) -> tuple[DomainIndex, ParseReport]:
    idx, rep = DomainIndex(), ParseReport()
    for n, line, s in _entries(text, pause):
        if s.startswith("*."):
            s = s[2:]
        elif s[0] == ".":
            s = s[1:]
        _add_subtree(idx, rep, s, n, line)
    rep.entries = len(idx)
    return idx, rep


def parse_hosts(text: str, pause: float = 0.0) -> tuple[DomainIndex, ParseReport]:
    idx, rep = DomainIndex(), ParseReport()
    for n, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        parts = s.split()
        if len(parts) < 2:
            rep.skip("invalid", n, line)
            continue
        for tok in parts[1:]:
            if tok.lower() in _HOSTS_IGNORE:
                continue
            d = domain(tok)
            if d is None:
                rep.skip("invalid", n, line)
            else:
                idx.exact[d] = None
    rep.entries = len(idx)
    return idx, rep


def parse_maltrail(text: str, pause: float = 0.0) -> tuple[DomainIndex, ParseReport]:
    idx, rep = DomainIndex(), ParseReport()
    for n, line, s in _entries(text, pause):
        if "/" in s:
            rep.skip("url", n, line)
            continue
        if ":" in s:
            if s.count(":") > 1 or s.startswith("["):
                rep.skip("ip", n, line)         # IPv6, with or without port
                continue
            s, _, port = s.partition(":")
            if not port.isdigit():
                rep.skip("invalid", n, line)
                continue
        _add_subtree(idx, rep, s, n, line)
    rep.entries = len(idx)
    return idx, rep


_RPZ_TRIGGERS = ("rpz-ip", "rpz-nsdname", "rpz-nsip", "rpz-client-ip")
_RR_CLASSES = frozenset({"in", "ch", "hs", "cs"})


def _rpz_records(text: str):
    """Yield (lineno, owner-or-None, tokens) for each record, handling $ORIGIN/$TTL and ( )."""
    buf, start, depth = [], 0, 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0]
        if not line.strip() and depth == 0:
            continue
        if depth == 0:
            start = n
            blank_owner = line[:1].isspace()
            buf = []
        depth += line.count("(") - line.count(")")
        buf.extend(line.replace("(", " ").replace(")", " ").split())
        if depth > 0:
            continue
        depth = 0
        if buf:
            yield start, (None if blank_owner else buf[0]), (buf if blank_owner else buf[1:])


def parse_rpz(text: str, pause: float = 0.0) -> tuple[DomainIndex, ParseReport]:
    idx, rep = DomainIndex(), ParseReport()
    origin = ""
    owner = None
    for n, own, toks in _rpz_records(text):
        if own is not None and own.upper() == "$ORIGIN":
            origin = toks[0].lower().rstrip(".") if toks else ""
            continue
        if own is not None and own.startswith("$"):
            continue
        if own is not None:
            owner = own.lower()
        if owner is None:
            rep.skip("invalid", n, " ".join(toks))
            continue
        # [ttl] [class] type rdata  (ttl and class in either order)
        rest = list(toks)
        while rest and (rest[0].isdigit() or rest[0].lower() in _RR_CLASSES):
            rest.pop(0)
        if not rest:
            rep.skip("invalid", n, owner)
            continue
        rtype, rdata = rest[0].upper(), [t.lower() for t in rest[1:]]
        if rtype in ("SOA", "NS"):
            continue
        name = _rpz_name(owner, origin)
        if name is None:
            rep.skip("apex", n, owner)
            continue
        if any(lbl in _RPZ_TRIGGERS for lbl in name.split(".")):
            rep.skip("unsupported", n, owner)
            continue
        action = _rpz_action(rtype, rdata)
        if action is None:
            rep.skip("unsupported", n, f"{owner} {rtype} {' '.join(rdata)}")
            continue
        wild = name.startswith("*.")
        d = domain(name[2:] if wild else name)
        if d is None:
            rep.skip("invalid", n, owner)
            continue
        target = idx.wild if wild else idx.exact
        if action.startswith("sinkhole:") and d in target and str(target[d]).startswith("sinkhole:"):
            continue  # several A/AAAA for one name: keep the first address
        target[d] = action
    rep.entries = len(idx)
    return idx, rep


def _rpz_name(owner: str, origin: str) -> str | None:
    if owner == "@":
        return None
    if owner.endswith("."):
        name = owner.rstrip(".")
        if origin and (name == origin):
            return None
        if origin and name.endswith("." + origin):
            name = name[: -len(origin) - 1]
        return name
    return owner


def _rpz_action(rtype: str, rdata: list[str]) -> str | None:
    if rtype == "CNAME" and rdata:
        t = rdata[0]
        return {".": "nxdomain", "*.": "nodata", "rpz-passthru.": "passthru",
                "rpz-drop.": "refused"}.get(t)
    if rtype in ("A", "AAAA") and rdata:
        return f"sinkhole:{rdata[0]}"
    return None


PARSERS = {"domains": parse_domains, "hosts": parse_hosts, "rpz": parse_rpz, "maltrail": parse_maltrail}


def parse(fmt: str, text: str, pause: float = 0.0) -> tuple[DomainIndex, ParseReport]:
    """Parse ``text`` in format ``fmt``; ``pause`` > 0 yields the CPU between chunks (reloads)."""
    return PARSERS[fmt](text, pause)
