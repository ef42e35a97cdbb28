"""The maintenance component's tables (append-only list of migrations; never edit an applied one)."""

MIGRATIONS = (
    # 1: windows, fault contacts with history, the notice outbox, per-customer impact records
    """
    CREATE TABLE mw_window (
        id            TEXT PRIMARY KEY,
        source        TEXT NOT NULL,             -- policy | runtime
        kind          TEXT NOT NULL,             -- planned | fault
        start         TEXT NOT NULL,             -- ISO 8601 UTC
        end           TEXT NOT NULL,
        reason_ja     TEXT NOT NULL,
        reason_en     TEXT NOT NULL,
        impact        TEXT NOT NULL,
        scope         TEXT NOT NULL,             -- JSON {customers, tags, nodes, prefixes}
        urgent        INTEGER NOT NULL DEFAULT 0,
        justification TEXT NOT NULL DEFAULT '',
        state         TEXT NOT NULL,
        sequence      INTEGER NOT NULL DEFAULT 0,
        reminded      INTEGER NOT NULL DEFAULT 0,
        deadline      TEXT,                      -- JSON of the notice deadline computed when announced
        created       TEXT NOT NULL,
        updated       TEXT NOT NULL,
        actor         TEXT NOT NULL
    );
    CREATE INDEX mw_window_state ON mw_window(state, start);
    CREATE TABLE mw_contact (
        customer    TEXT NOT NULL,
        version     INTEGER NOT NULL,
        email       TEXT,
        webhook     TEXT,
        mqtt_topic  TEXT,
        language    TEXT NOT NULL,
        source      TEXT NOT NULL,              -- policy | runtime
        actor       TEXT NOT NULL,
        reason      TEXT NOT NULL DEFAULT '',
        ts          TEXT NOT NULL,
        PRIMARY KEY (customer, version)
    );
    CREATE TABLE mw_outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        window_id       TEXT NOT NULL REFERENCES mw_window(id),
        customer        TEXT NOT NULL,
        kind            TEXT NOT NULL,          -- notice | update | reminder | started | completed | cancelled
        sequence        INTEGER NOT NULL,
        message_id      TEXT NOT NULL UNIQUE,
        contact_version INTEGER,
        recipient       TEXT,
        state           TEXT NOT NULL,          -- pending | sending | sent | failed
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt    TEXT NOT NULL,
        last_error      TEXT NOT NULL DEFAULT '',
        result          TEXT,                   -- JSON per-recipient SMTP answers
        payload         TEXT NOT NULL,          -- JSON snapshot rendered on every attempt (same bytes)
        created         TEXT NOT NULL,
        sent_at         TEXT,
        UNIQUE (window_id, customer, kind, sequence)
    );
    CREATE INDEX mw_outbox_due ON mw_outbox(state, next_attempt);
    CREATE TABLE mw_impact (
        window_id  TEXT NOT NULL REFERENCES mw_window(id),
        customer   TEXT NOT NULL,
        start      TEXT NOT NULL,
        end        TEXT,
        seconds    REAL,
        impact     TEXT NOT NULL,
        PRIMARY KEY (window_id, customer)
    );
    """,
    # 2: webhook deliveries of notices (the contact's optional webhook), one per notice row
    """
    CREATE TABLE mw_hook (
        notice_id     INTEGER PRIMARY KEY REFERENCES mw_outbox(id),
        url           TEXT NOT NULL,
        state         TEXT NOT NULL,            -- pending | sent | failed | superseded
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_attempt  TEXT NOT NULL,
        last_error    TEXT NOT NULL DEFAULT '',
        status        INTEGER,
        sent_at       TEXT
    );
    CREATE INDEX mw_hook_due ON mw_hook(state, next_attempt);
    """,
    # 3: MQTT deliveries of notices (the contact's optional mqtt_topic), one per notice row
    """
    CREATE TABLE mw_mqtt (
        notice_id     INTEGER PRIMARY KEY REFERENCES mw_outbox(id),
        topic         TEXT NOT NULL,
        state         TEXT NOT NULL,            -- pending | delivered | failed | superseded
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_attempt  TEXT NOT NULL,
        last_error    TEXT NOT NULL DEFAULT '',
        delivered_at  TEXT
    );
    CREATE INDEX mw_mqtt_due ON mw_mqtt(state, next_attempt);
    """,
)
