"""Canonical column names (CONTRACTS §1) and the names of derived columns, in one place."""

USER_ID = "user_id"
TS = "ts"
ITEM_ID = "item_id"
EVENT = "event"
SESSION_ID = "session_id"
MARKET = "market"
SEQ = "seq"
SHOWN_ITEMS = "shown_items"
SHOWN_PRICES = "shown_prices"

SOURCE_SESSION_ID = "source_session_id"
SOURCE_EVENT = "source_event"
SOURCE_FILE = "source_file"
REASON = "reason"
DAY = "dt"

ITEM_IDS = "item_ids"
BOOKED_ITEMS = "booked_items"
START_TS = "start_ts"
N_EVENTS = "n_events"
CONTEXT_ITEM = "context_item"
BOOKED_ITEM = "booked_item"

DROP = "drop"
BOOK = "book"
TS_OUTLIER = "ts_outlier"  # quarantine reason: a day far from the rest of the log
CLICK = "click"  # the event of every row when the source has no event column
