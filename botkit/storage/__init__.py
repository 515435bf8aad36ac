"""Storage: the database engine, the core ORM models and their migrations.

Plugins use ``bot.db`` (a ``Database``) and the models below; they never open
their own engine.
"""

from botkit.storage.database import Database, StorageSettings, user_id_for
from botkit.storage.migrations import MigrationBranch, Migrator
from botkit.storage.models import (
    Base,
    ConversationRecord,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    PluginStateRecord,
    PrivacyRecord,
    UserRecord,
    utcnow,
)

__all__ = [
    "Base",
    "ConversationRecord",
    "Database",
    "FeedbackRecord",
    "MessageRecord",
    "MigrationBranch",
    "Migrator",
    "ModerationEventRecord",
    "PluginStateRecord",
    "PrivacyRecord",
    "StorageSettings",
    "UserRecord",
    "user_id_for",
    "utcnow",
]
