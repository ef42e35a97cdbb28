"""The customer page's words, in Japanese and English (plain language, with the clause)."""

from __future__ import annotations

LANGS = ("ja", "en")

TEXT = {
    "en": {
        "title": "Your security and data choices",
        "lead": "These choices come from your service agreement (Article 45). Each change is "
                "effective immediately.",
        "customer": "Customer",
        "on": "On", "off": "Off",
        "turn_on": "Turn on", "turn_off": "Turn off",
        "since": "Since", "by_default": "Default (you have not changed it)",
        "changed": "Your change is effective now: {purpose} is {state}.",
        "blocked_title": "Blocked on your line (last 14 days)",
        "blocked_none": "Nothing was blocked on your line in the last 14 days.",
        "day": "Day", "list": "List", "count": "Blocked lookups",
        "other_lang": "日本語", "state": "Current state", "choice": "Change",
        "signout": "Sign out",
        "err_expired": "This link has expired. Please open this page again from the member portal.",
        "err_invalid": "This link is not valid. Please open this page again from the member portal.",
        "err_session": "Your session has ended. Please open this page again from the member portal.",
        "err_csrf": "The form could not be verified. Please reload the page and try again.",
        "err_other": "This form belongs to another customer's session. Nothing was changed.",
        "err_busy": "Too many changes in a short time. Please try again later.",
        "err_title": "Cannot continue",
        "signed_in": "Signed in.", "continue": "Continue to your choices",
        "signed_out": "You are signed out.",
        "purposes": {
            "cc-blocking": ("Blocking of malware control servers (Art. 45(4))",
                            "When on, we stop your devices from reaching servers that control malware "
                            "(C&C servers), found from DNS lookups. You may turn it off at any time."),
            "analysis": ("Analysis of attack records (Art. 45(5))",
                         "When on, records of blocked lookups on your line are included in our "
                         "statistical analysis of attacks (never showing individual communications)."),
            "isac-source": ("Sharing records where your line was the source (Art. 45(1))",
                            "When on, records of attack traffic sent from your line may be given to "
                            "the certified association (ICT-ISAC). Off unless you agree."),
            "isac-probe": ("Sharing records of attacks on your line (Art. 45(2))",
                           "When on, records of attacks and probes against your line may be given to "
                           "the certified association (ICT-ISAC). Off unless you agree."),
        },
    },
    "ja": {
        "title": "セキュリティとデータ提供の設定",
        "lead": "以下の設定はご契約約款第45条に基づくものです。変更はすぐに反映されます。",
        "customer": "お客さま番号",
        "on": "オン", "off": "オフ",
        "turn_on": "オンにする", "turn_off": "オフにする",
        "since": "変更日時", "by_default": "初期設定のまま",
        "changed": "変更は直ちに有効になりました: {purpose} は {state} です。",
        "blocked_title": "お客さまの回線で遮断した通信（過去14日間）",
        "blocked_none": "過去14日間に遮断した通信はありません。",
        "day": "日付", "list": "リスト", "count": "遮断した名前解決の数",
        "other_lang": "English", "state": "現在の設定", "choice": "変更",
        "signout": "ログアウト",
        "err_expired": "このリンクは有効期限が切れています。会員ページからもう一度開いてください。",
        "err_invalid": "このリンクは無効です。会員ページからもう一度開いてください。",
        "err_session": "セッションが終了しました。会員ページからもう一度開いてください。",
        "err_csrf": "フォームを確認できませんでした。ページを再読み込みしてからやり直してください。",
        "err_other": "このフォームは別のお客さまのセッションのものです。何も変更していません。",
        "err_busy": "短時間に多くの変更がありました。しばらくしてからやり直してください。",
        "err_title": "続行できません",
        "signed_in": "ログインしました。", "continue": "設定画面へ進む",
        "signed_out": "ログアウトしました。",
        "purposes": {
            "cc-blocking": ("マルウェア指令サーバ（C&C）への通信の遮断（第45条第4項）",
                            "オンの間、DNSの名前解決からマルウェアの指令サーバへの通信を検知し、遮断します。"
                            "いつでもオフにできます。"),
            "analysis": ("攻撃に関する記録の分析（第45条第5項）",
                         "オンの間、お客さまの回線で遮断した記録を攻撃の統計的な分析に含めます"
                         "（個々の通信が識別されることはありません）。"),
            "isac-source": ("お客さまの回線が送信元となった記録の提供（第45条第1項）",
                            "オンの間、お客さまの回線から送信された攻撃通信の記録を認定協会（ICT-ISAC）に"
                            "提供することがあります。同意いただくまではオフです。"),
            "isac-probe": ("お客さまの回線への攻撃の記録の提供（第45条第2項）",
                           "オンの間、お客さまの回線に対する攻撃や探索の記録を認定協会（ICT-ISAC）に"
                           "提供することがあります。同意いただくまではオフです。"),
        },
    },
}


def pick_lang(asked: str | None, session_lang: str | None, accept: str | None) -> str:
    """``?lang=`` first, then the session's, then the browser's first ja/en, else Japanese."""
    for cand in (asked, session_lang):
        if cand in LANGS:
            return cand
    for part in (accept or "").split(",")[:10]:
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGS:
            return tag
    return "ja"
