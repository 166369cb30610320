"""Dunning (middleware.dunning) on SQLite and PostgreSQL, with small hand-built books."""
