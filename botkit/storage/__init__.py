"""Storage: the database engine, the core ORM models, their migrations, the write-behind writer, and a user's data.

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
from botkit.storage.privacy import (
    Place,
    StoredMessage,
    StoredUser,
    UserData,
    UserRows,
    count_user_rows,
    delete_user_rows,
    find_user,
    forget_user,
    is_opted_out,
    opt_in,
    opt_out,
    user_data,
    user_record,
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
    "Place",
    "PluginStateRecord",
    "PrivacyRecord",
    "RecordSpool",
    "StorageSettings",
    "StoredMessage",
    "StoredUser",
    "UserData",
    "UserRows",
    "UserRecord",
    "WebAccountRecord",
    "WebSessionRecord",
    "WriteBehind",
    "WriteCounts",
    "count_user_rows",
    "delete_user_rows",
    "find_user",
    "forget_user",
    "insert_new",
    "is_opted_out",
    "is_rejection",
    "moderation_event",
    "opt_in",
    "opt_out",
    "rejection_reason",
    "user_data",
    "user_id_for",
    "user_record",
    "utcnow",
    "write_dead_letter",
    "write_moderation_events",
]
