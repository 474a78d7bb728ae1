"""The ``blazemesh`` command: the agent's commands (`blazemesh.agent.cli`), and ``blazemesh
sim``, whose code (the simulator, and with it trio.testing and pytest) loads only when it
runs: every other command starts without it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from blazemesh.agent.cli import main as agent_cli

SIM_HELP = "simulate a mesh in virtual time; reference epidemic models"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    simulating = args[:1] == ["sim"]

    def register_sim(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        if simulating:
            from blazemesh.simulations import cli as sim_cli

            sim_cli.register(sub, help=SIM_HELP)
        else:
            sub.add_parser("sim", help=SIM_HELP)  # listed; its commands load when it runs

    agent_cli.main(args, register_more=register_sim)
