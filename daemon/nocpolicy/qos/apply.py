"""The Linux backend: put a Plan into the kernel with nft and tc, verify it, roll back on failure.

This is the function router agents call with a plan received over MQTT::

    from nocpolicy.qos import LinuxBackend, plan_from_json
    result = LinuxBackend(netns=None).apply(plan_from_json(payload))   # raises EnforcementError
    result.as_dict()                                                   # for the acknowledgement

Order of one apply (each step checked, any failure undoes the earlier steps):

1. every interface of the plan must exist (nothing is touched otherwise);
2. tc, additive part: the htb root and every class/leaf that is missing or
   differs, parents before children (``tc -batch``; not atomic, so each
   successful line has an undo line);
3. nft: the whole table ``inet nocpolicy`` in one ``nft -f`` transaction (atomic);
4. tc, subtractive part: classes the plan no longer has (after nft stopped
   pointing at them);
5. read back: ``tc class show`` (every class under its planned parent; no root
   class but 1:1 - the HTB trap) and ``nft -j list`` (table, chains, map sizes).

When the tc part of a plan equals the last verified one (an emergency declare
or lift), steps 2, 4 and the tc read-back are skipped: only one ``nft -f`` runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import asdict, dataclass, field

from ..clock import monotonic
from ..errors import EnforcementError
from . import ingress
from .kernel import KClass, Runner, htb_default, parse_classes, parse_qdiscs, rate_close
from .plan import LINK, HtbClass, InterfaceTree, Plan
from .render import (
    TABLE,
    leaf_limit,
    render_nft,
    tc_class_line,
    tc_delete_line,
    tc_leaf_line,
    tc_root_line,
)


@dataclass
class ApplyResult:
    ok: bool
    seconds: float
    tc_commands: int
    nft_bytes: int
    emergency: str | None
    steps: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _TcChange:
    dev: str
    do: str
    undo: str | None


class LinuxBackend:
    """Applies plans on this host (or inside ``netns``). Keeps the last verified plan for rollback."""

    name = "linux"

    def __init__(self, netns: str | None = None, runner: Runner | None = None):
        self.runner = runner or Runner(netns)
        self.current: Plan | None = None
        self._nft_text: str | None = None        # last nft script that applied and verified
        self._nft_snapshot_taken = False

    # -- public ------------------------------------------------------------------

    def apply(self, plan: Plan) -> ApplyResult:
        """Make the kernel hold ``plan``; on any failure restore what it held and raise EnforcementError."""
        t0 = monotonic()
        steps: list[str] = []
        self._check_interfaces(plan)
        old_nft = self._previous_nft()
        tc_same = self.current is not None and self.current.tc_part() == plan.tc_part()
        done: list[_TcChange] = []
        created: list[str] = []
        script = render_nft(plan)
        try:
            pre, post, gone = self._tc_changes(plan, created) if not tc_same else ([], [], [])
            self._tc_run(pre, done)
            steps.append(f"tc: {len(pre)} change(s)")
            self._nft_run(script)
            steps.append(f"nft: table inet {TABLE} replaced ({len(script)} bytes)")
            self._tc_run(post, done)
            if post:
                steps.append(f"tc: {len(post)} obsolete class(es)/filter(s) removed")
            if not tc_same:
                self._verify_tc(plan)
                ingress.verify_uploads(self.runner, plan)
            self._verify_nft(plan)
            steps.append("verified")
        except EnforcementError as exc:
            notes = self._rollback(done, old_nft, created)
            raise EnforcementError(f"{exc}; {notes}") from None
        for ifb in gone:           # upload shaping dropped: its ifb devices go (nothing points at them)
            self.runner.run("ip", "link", "del", ifb)
        self.current = plan
        self._nft_text = script
        return ApplyResult(True, monotonic() - t0, len(pre) + len(post), len(script),
                           plan.emergency.profile if plan.emergency else None, steps)

    def _tc_changes(self, plan: Plan, created: list[str]) -> tuple[list[_TcChange], list[_TcChange], list[str]]:
        """(before nft, after nft, ifb devices to delete at the end); ``created`` gets the ifb
        devices made here (rollback deletes them)."""
        created += ingress.ensure_ifbs(self.runner, plan)
        pre: list[_TcChange] = []
        post: list[_TcChange] = []
        for tree in (*plan.interfaces, *(u.tree for u in plan.uploads)):
            a, b = self._tc_diff(tree, plan.leaf)
            pre += a
            post += b
        fpre, fpost = ingress.filter_changes(self.runner, plan)
        stale, gone = ingress.stale_uploads(self.runner, plan, self.runner.links())
        as_changes = lambda pairs: [_TcChange("", do, undo) for do, undo in pairs]  # noqa: E731
        pre += as_changes(fpre) + as_changes(ingress.ingress_changes(self.runner, plan))
        post += as_changes(fpost) + as_changes(stale)
        return pre, post, gone

    def remove(self, interfaces) -> None:
        """Take every nocpolicy rule out of the kernel (table and root qdiscs). Not used on stop."""
        self.runner.run("nft", "delete", "table", "inet", TABLE)
        for name in interfaces:
            qd = parse_qdiscs(self.runner.run("tc", "qdisc", "show", "dev", name).out)
            if htb_default(qd) is not None:
                self.runner.run("tc", "qdisc", "del", "dev", name, "root")
            if ingress.ifb_name(name) in self.runner.links():
                self.runner.run("tc", "qdisc", "del", "dev", name, "ingress")
                self.runner.run("ip", "link", "del", ingress.ifb_name(name))
        self.current = None
        self._nft_text = None

    def class_stats(self, dev: str) -> dict[int, KClass]:
        return parse_classes(self.runner.check("tc", "-s", "class", "show", "dev", dev))

    def map_counters(self, name: str) -> list[tuple[str, int, int]]:
        """(prefix, bytes, packets) per element of an nft map/set with counters."""
        out = self.runner.check("nft", "-j", "list", "map" if name.startswith(("caps", "ecaps")) else "set",
                                "inet", TABLE, name)
        return list(_element_counters(out))

    # -- steps -------------------------------------------------------------------

    def _check_interfaces(self, plan: Plan) -> None:
        have = self.runner.links()
        missing = [t.name for t in plan.interfaces if t.name not in have]
        if missing:
            where = f"network namespace {self.runner.netns}" if self.runner.netns else "this host"
            raise EnforcementError(f"interface(s) {', '.join(missing)} do not exist in {where}; "
                                   "nothing was changed")

    def _previous_nft(self) -> str | None:
        if self._nft_text is not None or self._nft_snapshot_taken:
            return self._nft_text
        r = self.runner.run("nft", "list", "table", "inet", TABLE)
        self._nft_snapshot_taken = True
        self._nft_text = _as_replacement(r.out) if r.rc == 0 else None
        return self._nft_text

    def _tc_diff(self, tree: InterfaceTree, leaf: str) -> tuple[list[_TcChange], list[_TcChange]]:
        dev = tree.name
        kclasses = parse_classes(self.runner.check("tc", "class", "show", "dev", dev))
        qdiscs = parse_qdiscs(self.runner.check("tc", "qdisc", "show", "dev", dev))
        leaves = {q.parent: q for q in qdiscs if q.parent is not None}
        pre: list[_TcChange] = []
        default = htb_default(qdiscs)
        if default is None:
            pre.append(_TcChange(dev, tc_root_line(tree), f"qdisc del dev {dev} root"))
            kclasses = {}
        elif default != tree.default:
            pre.append(_TcChange(dev, tc_root_line(tree), f"qdisc replace dev {dev} root handle 1: htb "
                                                          f"default {default:x}"))
        post: list[_TcChange] = []
        planned = {c.minor for c in tree.classes}
        for c in tree.classes:
            k = kclasses.get(c.minor)
            if k is not None and k.parent != (c.parent or None):      # wrong parent (HTB trap): re-create
                pre.append(_TcChange(dev, tc_delete_line(dev, c.minor), _restore_line(dev, k)))
                k = None
            if k is None:
                pre.append(_TcChange(dev, tc_class_line(dev, c, "add"), tc_delete_line(dev, c.minor)))
            elif not (rate_close(k.rate, c.rate) and rate_close(k.ceil, c.ceil) and (k.prio == c.prio or not c.leaf)):
                pre.append(_TcChange(dev, tc_class_line(dev, c, "change"), _restore_line(dev, k, "change")))
            q = leaves.get(c.minor)
            stale = q is not None and leaf == "pfifo" and f"limit {leaf_limit(c.ceil)}p" not in q.detail
            if c.leaf and (k is None or q is None or q.kind != leaf or q.handle != c.minor or stale):
                pre.append(_TcChange(dev, tc_leaf_line(dev, c, leaf), _leaf_restore(dev, c.minor, q)))
        extra = [k for m, k in kclasses.items() if m not in planned]
        for k in sorted(extra, key=lambda k: _depth(k, kclasses), reverse=True):   # children first
            post.append(_TcChange(dev, tc_delete_line(dev, k.minor), _restore_line(dev, k)))
        return pre, post

    def _tc_run(self, changes: list[_TcChange], done: list[_TcChange]) -> None:
        """Run the changes as one batch; ``done`` gets every line that took effect (for the undo)."""
        if not changes:
            return
        lines: list[tuple[str, _TcChange]] = []
        for c in changes:
            lines += [(part, c) for part in c.do.splitlines()]
        r = self.runner.run("tc", "-batch", "-", stdin="\n".join(t for t, _ in lines) + "\n")
        if r.rc == 0:
            done.extend(changes)
            return
        m = re.search(r"Command failed -:(\d+)", r.err)
        n = int(m.group(1)) if m else 1
        for _, c in lines[:n - 1]:
            if not done or done[-1] is not c:
                done.append(c)
        failing = lines[n - 1][0] if 0 < n <= len(lines) else "?"
        why = "; ".join(line.strip() for line in r.err.splitlines() if line.strip() and "Command failed" not in line)
        raise EnforcementError(f"tc -batch line {n} `{failing}` failed: {why[:300] or 'error'}")

    def _nft_run(self, script: str) -> None:
        r = self.runner.run("nft", "-f", "-", stdin=script)
        if r.rc != 0:
            raise EnforcementError(f"nft -f (table inet {TABLE}) refused the rules, nothing changed there: "
                                   f"{_nft_error(r.err, script)}")

    def _verify_tc(self, plan: Plan) -> None:
        for tree in (*plan.interfaces, *(u.tree for u in plan.uploads)):
            kc = parse_classes(self.runner.check("tc", "class", "show", "dev", tree.name))
            for c in tree.classes:
                k = kc.get(c.minor)
                if k is None:
                    raise EnforcementError(f"verify: {tree.name} has no class 1:{c.minor:x} ({c.name})")
                if k.parent != (c.parent or None):
                    raise EnforcementError(f"verify: {tree.name} class 1:{c.minor:x} ({c.name}) hangs under "
                                           f"{'the root' if k.parent is None else f'1:{k.parent:x}'}, "
                                           f"not 1:{c.parent:x}: it would escape its parent's ceiling")
            roots = [m for m, k in kc.items() if k.parent is None and m != LINK]
            if roots:
                raise EnforcementError(f"verify: {tree.name} has root classes {', '.join(f'1:{m:x}' for m in roots)} "
                                       "besides 1:1 (HTB trap: they escape the link ceiling)")

    def _verify_nft(self, plan: Plan) -> None:
        out = self.runner.check("nft", "-j", "list", "set", "inet", TABLE, "emergency_ifs")
        got = set()
        for obj in json.loads(out).get("nftables", []):
            for e in (obj.get("set", {}).get("elem") or []):
                got.add(e if isinstance(e, str) else json.dumps(e))
        want = set(plan.emergency.scope) if plan.emergency else set()
        if got != want:
            raise EnforcementError(f"verify: nft set emergency_ifs holds {sorted(got)}, expected {sorted(want)}")
        chains = self.runner.check("nft", "-j", "list", "chains", "inet")
        names = {o["chain"]["name"] for o in json.loads(chains).get("nftables", [])
                 if "chain" in o and o["chain"].get("table") == TABLE}
        if not {"classify", "emergency"} <= names:
            raise EnforcementError(f"verify: table inet {TABLE} lacks its chains (has {sorted(names)})")

    def _rollback(self, done: list[_TcChange], old_nft: str | None, created: list[str] = ()) -> str:
        notes = []
        undo = [c.undo for c in reversed(done) if c.undo]
        if undo:
            r = self.runner.run("tc", "-force", "-batch", "-", stdin="\n".join(undo) + "\n")
            notes.append("tc rolled back" if r.rc == 0 else f"tc rollback incomplete: {r.err.strip()[:200]}")
        for ifb in created:
            self.runner.run("ip", "link", "del", ifb)
        if created:
            notes.append(f"ifb {', '.join(created)} removed")
        if old_nft is None:
            self.runner.run("nft", "delete", "table", "inet", TABLE)
            notes.append("nft table removed (there was none before)")
        else:
            r = self.runner.run("nft", "-f", "-", stdin=old_nft)
            notes.append("nft rules restored" if r.rc == 0 else f"nft restore failed: {r.err.strip()[:200]}")
        return "; ".join(notes) or "nothing to roll back"


def _depth(k: KClass, all_: dict[int, KClass]) -> int:
    d, p = 0, k.parent
    while p is not None and p in all_ and d < 8:
        d, p = d + 1, all_[p].parent
    return d


def _restore_line(dev: str, k: KClass, verb: str = "add") -> str:
    c = HtbClass(k.minor, k.parent or 0, "", k.rate, k.ceil, k.prio, k.leaf is not None)
    line = tc_class_line(dev, c, verb)
    if verb == "add" and k.leaf is not None:
        line += "\n" + tc_leaf_line(dev, dataclasses.replace(c, minor=k.minor), "pfifo").replace(
            f"handle {k.minor:x}:", f"handle {k.leaf:x}:")
    return line


def _leaf_restore(dev: str, minor: int, q) -> str | None:
    """The line putting back the leaf qdisc the kernel had (None: there was none)."""
    if q is None:
        return None
    m = re.search(r"limit (\d+)p?", q.detail)
    args = f" limit {m.group(1)}" if m and q.kind in ("pfifo", "bfifo", "sfq") else ""
    return f"qdisc replace dev {dev} parent 1:{minor:x} handle {q.handle:x}: {q.kind}{args}"


def _as_replacement(listing: str) -> str:
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\n{listing}"


def _nft_error(err: str, script: str) -> str:
    lines = script.splitlines()
    m = re.search(r":(\d+):\d+-\d+: Error: (.*)", err)
    if m:
        n = int(m.group(1))
        text = lines[n - 1].strip() if 0 < n <= len(lines) else "?"
        return f"line {n} `{text[:120]}`: {m.group(2)}"
    return err.strip().splitlines()[0][:300] if err.strip() else "unknown error"


def _element_counters(out: str):
    for obj in json.loads(out).get("nftables", []):
        body = obj.get("map") or obj.get("set")
        if not body:
            continue
        for e in body.get("elem") or []:
            key = e[0] if isinstance(e, list) else e
            el = key.get("elem", {}) if isinstance(key, dict) else {}
            val = el.get("val")
            if isinstance(val, dict) and "prefix" in val:
                prefix = f"{val['prefix']['addr']}/{val['prefix']['len']}"
            elif isinstance(val, dict) and "range" in val:
                prefix = "-".join(str(x) for x in val["range"])
            else:
                prefix = str(val)
            cnt = el.get("counter") or {}
            yield prefix, int(cnt.get("bytes", 0)), int(cnt.get("packets", 0))
