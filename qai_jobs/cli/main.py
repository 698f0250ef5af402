"""The console script ``qai-jobs``: one group, every command registered from its module."""

from __future__ import annotations

import click

from qai_jobs.cli import fleet, inspection, ops, processes, producer


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="qai-jobs")
def main() -> None:
    """qai-jobs: durable, ordered workspace actions for AI coding-agent sandboxes.

    Configuration comes from the environment and a .env file (see README).
    """


for _module in (processes, producer, inspection, ops, fleet):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
