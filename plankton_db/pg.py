"""The psycopg connection under a SQLAlchemy session, with pgvector's types registered once per connection.

Hot paths (search, bulk code loads) talk to psycopg directly: binary vectors, server-side prepared
statements and COPY, none of which SQLAlchemy's text() layer offers.
"""

from __future__ import annotations

import weakref

import psycopg
from sqlalchemy.orm import Session

# Registration costs four catalogue round trips, so it is done once per pooled connection.
_registered: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def raw_connection(session: Session) -> psycopg.Connection:
    """The session's psycopg connection (inside the session's transaction), pgvector types registered."""
    conn = session.connection().connection.driver_connection
    if conn not in _registered:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        _registered.add(conn)
    return conn
