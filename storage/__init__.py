"""Bytes and rows: database engine and sessions, migrations, object stores, tenancy, audit."""
