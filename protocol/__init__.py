"""blazemesh's sans-IO core: pure, synchronous state machines and codecs.

Nothing in this package performs I/O, reads a clock or draws randomness: time and
randomness are arguments (docs/design.md, "Rules of the house").
"""
