"""Persistence: SQLAlchemy 2 records, queries returning domain values, Alembic upgrade.

Modules: types (portable column types), records (the tables), db (Database: engine + sessions),
queries (what the rest of the product asks of the store), migrate (Alembic to head).
SQLite by default, PostgreSQL by URL; the same records and migrations serve both.
"""
