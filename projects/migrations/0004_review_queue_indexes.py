"""Indexes for the review queue's filters that a plain B-tree cannot serve (PostgreSQL only).

* Text search finds outputs whose input or answer contains a phrase (`LIKE '%phrase%'`):
  pg_trgm GIN indexes on the inputs' search text and on the answers' raw text.
* The label filter compares JSON values (`parsed = '"card_arrival"'`, and the edited value):
  hash indexes, which, unlike B-trees, accept values of any size (long JSON or text answers).

On SQLite (the zero-install `make run`) nothing is done. Where pg_trgm cannot be created (no
privilege), the trigram indexes are skipped and the search still works, unindexed.
"""

from django.db import migrations

TRIGRAM = [
    ("input_search_text_trgm", "projects_inputrow", "search_text"),
    ("output_raw_text_trgm", "projects_teacheroutput", "raw_text"),
]
HASH = [
    ("output_parsed_hash", "projects_teacheroutput", "parsed"),
    ("output_edited_value_hash", "projects_teacheroutput", "edited_value"),
]


def _has_trigram(cursor) -> bool:  # type: ignore[no-untyped-def]
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
    if cursor.fetchone() is not None:
        return True
    cursor.execute("SAVEPOINT trgm")
    try:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception:  # no privilege: leave the search unindexed
        cursor.execute("ROLLBACK TO SAVEPOINT trgm")
        return False
    cursor.execute("RELEASE SAVEPOINT trgm")
    return True


def create(apps, schema_editor):  # type: ignore[no-untyped-def]
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        if _has_trigram(cursor):
            for name, table, column in TRIGRAM:
                cursor.execute(
                    f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({column} gin_trgm_ops)"
                )
        for name, table, column in HASH:
            cursor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING hash ({column})")


def drop(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        for name, _, _ in TRIGRAM + HASH:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("projects", "0003_review_and_datasets")]

    operations = [migrations.RunPython(create, drop)]
