"""Name decoding on the DNS hot path, before and after the issue-14 bounds (backward
pointers only, 255-octet limit while decoding, at most 64 answer records).

    python bench/wire_names_bench.py [--runs 7] [--n 200000]

Both versions run in the same process on the same messages, alternating, and the
median ratio over the runs is printed (new / old; < 1.0 means faster). Messages:
a typical forwarded answer with a CNAME chain (what dns/engine.py inspects on every
forwarded answer with answers), and a question read by read_name alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import dnslib

from nocpolicy.dns import wire


def old_read_name(data: bytes, pos: int):
    """read_name as it was on main before issue 14 (jump counter, no length check)."""
    labels, end, jumps, n = [], -1, 0, len(data)
    while True:
        if pos >= n:
            raise wire.WireError("name runs past the end")
        ln = data[pos]
        if ln >= 0xC0:
            if pos + 1 >= n:
                raise wire.WireError("truncated pointer")
            if end < 0:
                end = pos + 2
            pos = ((ln & 0x3F) << 8) | data[pos + 1]
            jumps += 1
            if jumps > 64:
                raise wire.WireError("compression loop")
            continue
        if ln > 63:
            raise wire.WireError("bad label type")
        if ln == 0:
            pos += 1
            break
        labels.append(data[pos + 1:pos + 1 + ln])
        pos += 1 + ln
    return b".".join(labels).lower().decode("latin-1"), (end if end >= 0 else pos)


def old_answer_cnames(resp: bytes) -> list[str]:
    qd, an = (resp[4] << 8) | resp[5], (resp[6] << 8) | resp[7]
    if not an:
        return []
    pos, out = 12, []
    try:
        for _ in range(qd):
            _, pos = old_read_name(resp, pos)
            pos += 4
        for _ in range(an):
            _, pos = old_read_name(resp, pos)
            rtype = (resp[pos] << 8) | resp[pos + 1]
            rdlen = (resp[pos + 8] << 8) | resp[pos + 9]
            pos += 10
            if rtype == wire.TYPE_CNAME:
                out.append(old_read_name(resp, pos)[0])
            pos += rdlen
    except (wire.WireError, IndexError):
        return out
    return out


def answer() -> bytes:
    q = dnslib.DNSRecord.question("www.shop.example.co.jp", "A")
    r = q.reply()
    r.add_answer(dnslib.RR("www.shop.example.co.jp", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("shop.cdn.example.net"),
                           ttl=60))
    r.add_answer(dnslib.RR("shop.cdn.example.net", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("e1.cdn.example.net"),
                           ttl=60))
    for i in range(4):
        r.add_answer(dnslib.RR("e1.cdn.example.net", dnslib.QTYPE.A, rdata=dnslib.A(f"203.0.113.{i}"), ttl=60))
    return r.pack()


def timed(fn, arg, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--n", type=int, default=200_000)
    a = ap.parse_args()
    resp = answer()
    assert wire.answer_cnames(resp) == old_answer_cnames(resp)
    cases = {"answer_cnames (2 CNAMEs + 4 A)": (old_answer_cnames, wire.answer_cnames, resp),
             "read_name (question)": (lambda d: old_read_name(d, 12), lambda d: wire.read_name(d, 12), resp)}
    for label, (old, new, arg) in cases.items():
        ratios, olds, news = [], [], []
        for i in range(a.runs):
            first, second = (old, new) if i % 2 == 0 else (new, old)
            t1, t2 = timed(first, arg, a.n), timed(second, arg, a.n)
            to, tn = (t1, t2) if first is old else (t2, t1)
            olds.append(to / a.n * 1e6)
            news.append(tn / a.n * 1e6)
            ratios.append(tn / to)
        print(f"{label}: old {statistics.median(olds):.2f} us, new {statistics.median(news):.2f} us, "
              f"new/old median {statistics.median(ratios):.2f} ({a.runs} runs of {a.n})")


if __name__ == "__main__":
    main()
