"""blazemesh: a peer-to-peer sync agent.

The installed package is laid out as the repository is (docs/design.md, "The house"):
`blazemesh.protocol` is the sans-IO core, `blazemesh.agent` the trio shell around it, and
`blazemesh.simulations` runs the agent on a virtual network; the folders live at the
repository's top level and this package links them. `blazemesh.cli` is the command.
"""

__version__ = "0.2.0"
