"""Finding peers: mDNS adverts (and their in-memory twin), and peering, which turns what
is seen into links by the mesh's topology."""
