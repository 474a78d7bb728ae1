"""The ``blazemesh`` command line (the simulator's commands live in
`blazemesh.simulations.cli`)."""
