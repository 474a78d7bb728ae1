"""The replica's storage: the data directory, the SQLite store, the replica API apps use,
and observers of what commits."""
