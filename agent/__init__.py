"""blazemesh's trio shell: storage, sockets, discovery, peers, the replica API and the CLI."""
