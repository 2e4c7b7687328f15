"""Privacy core: data categories and retention (the purpose engine and audit come with issue 5)."""

from privacy.categories import DataCategory
from privacy.retention import RETENTION_DAYS, RetentionClass

__all__ = ["RETENTION_DAYS", "DataCategory", "RetentionClass"]
