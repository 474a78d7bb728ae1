"""Who is who: the node's identity and its mesh membership (secret, allowlist, join codes)."""
