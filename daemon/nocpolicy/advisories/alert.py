"""The customer alert of an advisory case (pure): what was seen, when, and what to do, in
the fault contact's language (ja, en or both), as an e-mail message."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

SOURCE_NAME = {"notice": ("NICT NOTICE（IoT機器調査）", "NICT NOTICE (IoT device survey)"),
               "nicter": ("NICT NICTER（マルウェア感染観測）", "NICT NICTER (malware infection observation)")}
ADVICE = {
    "weak-credentials": ("機器のIDとパスワードを推測されにくいものに変更し、ファームウェアを最新にしてください。",
                         "Change the device's user name and password to ones that are hard to guess, and update "
                         "its firmware."),
    "malware": ("機器がマルウェアに感染しているおそれがあります。機器を再起動して初期化し、ファームウェアを"
                "最新にしてからパスワードを変更してください。",
                "The device may be infected with malware. Restart and reset it, update its firmware, then "
                "change its password."),
}
GENERIC = ("インターネットから接続できる状態の機器やサービスを確認し、不要であれば停止、必要であれば"
           "アクセス制限と最新化を行ってください。",
           "Check which devices or services are reachable from the Internet; turn off those you do not need, "
           "and restrict access to and update those you do.")


def advice(finding: str) -> tuple[str, str]:
    for key, text in ADVICE.items():
        if key in finding:
            return text
    return GENERIC


def languages(contact_language: str) -> tuple[str, ...]:
    langs = tuple(x for x in contact_language.split("+") if x in ("ja", "en"))
    return langs or ("ja", "en")


def render(case: dict, *, sender: str, recipient: str, language: str, provider: str,
           tz: str = "Asia/Tokyo") -> EmailMessage:
    """The alert for ``case`` (customer, source, service, finding, address, port, first_seen,
    last_seen, reports, message_id, created)."""
    seen = dt.datetime.fromisoformat(case["first_seen"]).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")
    where = case["address"] + (f" port {case['port']}" if case.get("port") is not None else "")
    src_ja, src_en = SOURCE_NAME.get(case["source"], (case["source"], case["source"]))
    adv_ja, adv_en = advice(case["finding"])
    parts = []
    for lang in languages(language):
        if lang == "ja":
            parts.append(f"{provider} です。\n\n{src_ja}から、お客さまの回線の機器について次の通知がありました"
                         f"（ご契約約款第45条第3項）。\n\n  観測日時: {seen}\n  アドレス: {where}\n"
                         f"  サービス: {case['service']}\n  内容: {case['finding']}\n  通知件数: {case['reports']}\n\n"
                         f"お願い: {adv_ja}\n\n案件番号: {case['id']}\n")
        else:
            parts.append(f"This is {provider}.\n\n{src_en} reported a device on your line (service agreement "
                         f"Art. 45(3)).\n\n  Seen: {seen}\n  Address: {where}\n  Service: {case['service']}\n"
                         f"  Finding: {case['finding']}\n  Reports: {case['reports']}\n\nWhat to do: {adv_en}\n\n"
                         f"Case: {case['id']}\n")
    subject = {"ja": "【セキュリティに関するお知らせ】お客さまの機器について",
               "en": "Security advisory about a device on your line"}
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = " / ".join(subject[x] for x in languages(language))
    msg["Message-ID"] = case["message_id"]
    msg["Date"] = format_datetime(dt.datetime.fromisoformat(case["created"]))
    msg["Content-Language"] = ", ".join(languages(language))
    msg.set_content("\n----\n\n".join(parts))
    return msg
