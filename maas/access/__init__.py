"""Who may use which model, on which terms, how much: the access store and its records.

``records`` holds the values (keys, agreements, acceptances, usage rows, rate and quota
notation), ``tables`` the database schema, ``database`` one engine per URL (SQLite or
PostgreSQL), ``migrate`` and ``migrations`` the versioned schema changes that bring an older
store up to ``tables``, ``store`` the reads and atomic writes, ``usage`` the metered usage and
what quotas used. The serve
apps enforce what is stored here (``serve_apps.gate``); the CLI manages it (``maas keys``,
``maas agreements``, ``maas usage``).
"""

from maas.access.records import (ALL_MODELS, ANONYMOUS, KEY_PREFIX, PERIODS, Acceptance,
                                 AccessError, Agreement, KeyRecord, Quota, Refusal, UsageRow, iso,
                                 parse_quota, parse_rate, parse_token_quota, period_bounds,
                                 split_key, terms_digest)
from maas.access.store import AccessStore, onboard, publish_agreements
from maas.access.usage import UNCOUNTED_STATUSES

__all__ = ["ALL_MODELS", "ANONYMOUS", "KEY_PREFIX", "PERIODS", "UNCOUNTED_STATUSES", "Acceptance",
           "AccessError", "AccessStore", "Agreement", "KeyRecord", "Quota", "Refusal", "UsageRow",
           "iso", "onboard", "parse_quota", "parse_rate", "parse_token_quota", "period_bounds",
           "publish_agreements", "split_key", "terms_digest"]
