"""Session-state keys that more than one page or helper reads: each is named here once. A key only one
page uses is that page's own, prefixed with its name (``decoding_pair``)."""

SETTINGS = "app_settings"             # the Settings in use (pages/_settings.py)
REVIEWER = "app_reviewer"             # who decides in this tab: stored with every decision
PENDING = "curation_pending"          # this tab's hand-offs to curation (the queue itself is in the store)
TARGETS = "influential_targets"       # pair ids Influential samples hands to Controlled decoding
LAST_DECODED = "decoding_last"        # Controlled decoding's last result, which Reward explorer can load
