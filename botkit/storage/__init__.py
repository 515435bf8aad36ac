"""Storage: the database engine, the core ORM models, their migrations, and the write-behind writer.

Plugins use ``bot.db`` (a ``Database``) and the models below; they never open
their own engine. A plugin that stores something on every message queues it in
a ``WriteBehind`` instead of making the reply wait for the database.
"""

from botkit.storage.database import (
    Database,
    StorageSettings,
    insert_new,
    is_rejection,
    rejection_reason,
    user_id_for,
    write_dead_letter,
)
from botkit.storage.migrations import MigrationBranch, Migrator
from botkit.storage.models import (
    AuditRecord,
    Base,
    CanaryRecord,
    ConversationRecord,
    DeadLetterRecord,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    PluginStateRecord,
    PrivacyRecord,
    UserRecord,
    WebAccountRecord,
    WebSessionRecord,
    utcnow,
)
from botkit.storage.moderation_rows import moderation_event, write_moderation_events
from botkit.storage.text_index import (
    SHORTEST_INDEXED,
    compact_text_index,
    fts_match,
    has_fts_index,
    messages_fts,
)
from botkit.storage.write_behind import RecordSpool, WriteBehind, WriteCounts

__all__ = [
    "AuditRecord",
    "CanaryRecord",
    "Base",
    "ConversationRecord",
    "Database",
    "DeadLetterRecord",
    "FeedbackRecord",
    "MessageRecord",
    "MigrationBranch",
    "Migrator",
    "ModerationEventRecord",
    "PluginStateRecord",
    "PrivacyRecord",
    "RecordSpool",
    "SHORTEST_INDEXED",
    "StorageSettings",
    "UserRecord",
    "WebAccountRecord",
    "WebSessionRecord",
    "WriteBehind",
    "WriteCounts",
    "compact_text_index",
    "fts_match",
    "has_fts_index",
    "insert_new",
    "is_rejection",
    "messages_fts",
    "moderation_event",
    "rejection_reason",
    "user_id_for",
    "utcnow",
    "write_dead_letter",
    "write_moderation_events",
]
