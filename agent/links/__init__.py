"""Links to peers: the network edge, the secure channel, one link's tasks, and the node
that keeps them."""
